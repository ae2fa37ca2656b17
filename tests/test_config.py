"""Config validation: a typo or a bad value stops the run before anything loads, naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from treepref.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


# `treepref generate` recipes; configs/train-*.yaml are `treepref train` recipes (tests/test_train.py).
GENERATE_RECIPES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("train-"))


# Recipes that read a folder an earlier `treepref train` wrote: the key that names it.
NEEDS_TRAINED = {"prm-guided-mcts.yaml": "search.options.evaluator.model",
                 "pav-guided-beam.yaml": "search.options.evaluator.model",
                 "q-value.yaml": "search.options.scorer.model"}
# and what such a folder's training summary would say (an empty folder has none)
SUMMARY_SAYS = {"q-value.yaml": ["search.options.scorer.reference=base", "search.options.scorer.beta=0.1"]}


def _recipe(name, tmp_path):
    overrides = [f"{NEEDS_TRAINED[name]}={tmp_path}", *SUMMARY_SAYS.get(name, ())] if name in NEEDS_TRAINED else []
    return load_config(ROOT / "configs" / name, overrides)


@pytest.mark.parametrize("name", GENERATE_RECIPES)
def test_every_shipped_recipe_is_valid(name, tmp_path):
    cfg = _recipe(name, tmp_path)
    assert cfg.source.endswith(name)


def test_a_recipe_whose_trained_folder_is_missing_says_so(tmp_path):
    missing = tmp_path / "train-prm" / "model"
    with pytest.raises(ConfigError, match=f"prm-guided-mcts.yaml: .*evaluator.model: no folder '{missing}'"):
        load_config(ROOT / "configs" / "prm-guided-mcts.yaml", [f"search.options.evaluator.model={missing}"])


def _with_shots(name: str) -> bool:
    import yaml

    data = yaml.safe_load((ROOT / "configs" / name).read_text())
    return (data.get("problems") or {}).get("source", "arithmetic") == "arithmetic" and bool(
        (data.get("env") or {}).get("few_shot"))


@pytest.mark.parametrize("name", [n for n in GENERATE_RECIPES if _with_shots(n)])
def test_shipped_arithmetic_recipes_show_examples_of_the_problems_length(name, tmp_path):
    # SmolLM2 copies the examples' length: mismatched examples add spurious steps and spoil MC labels.
    from treepref.few_shot import load_shots

    cfg = _recipe(name, tmp_path)
    ops = cfg.problems.options["difficulty"]
    for shot in load_shots(cfg.env.few_shot, name):
        assert len(shot.steps) == ops + 1 and shot.steps[-1].startswith("The answer is")


def test_extract_options_are_checked_before_the_search(tmp_path):
    with pytest.raises(ConfigError, match=r"extract.options: unknown option 'min_margn': none of the formats"):
        load_config(write(tmp_path, "extract:\n  formats: [step_pairs, trees]\n  options: {min_margn: 0.3}\n"))
    # an option one of the formats takes is fine: each format gets the options it takes
    cfg = load_config(write(tmp_path, "extract:\n  formats: [stepwise, trees]\n  options: {paths: leaves}\n"))
    assert cfg.extract.options == {"paths": "leaves"}



def test_an_outcome_label_is_for_stepwise_rows_only(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe.yaml: extract.value: value='outcome' .* format 'step_pairs'"):
        load_config(write(tmp_path, "extract:\n  formats: [stepwise, step_pairs]\n  value: outcome\n"))
    assert load_config(write(tmp_path, "extract:\n  formats: [stepwise]\n  value: outcome\n")).extract.value == "outcome"


def test_defaults_fill_missing_sections(tmp_path):
    cfg = load_config(write(tmp_path, "search:\n  name: best_first\n"))
    assert cfg.search.name == "best_first"
    assert cfg.model.backend == "hf" and cfg.env.delimiter == "\n\n"


@pytest.mark.parametrize("text, needle", [
    ("serch:\n  name: mcts\n", "unknown key 'serch'"),
    ("search:\n  nme: mcts\n", "unknown key 'search.nme'"),
    ("env:\n  max_depth: deep\n", "env.max_depth: expected int or null, got 'deep'"),
    ("env:\n  max_depth: 0\n", "env.max_depth must be >= 1"),
    ("sampling:\n  top_p: 1.5\n", "sampling.top_p"),
    ("sampling:\n  temperature: true\n", "sampling.temperature: expected float, got True"),
    ("model:\n  backend: llama\n", "model.backend: unknown backend 'llama' (known: "),
    ("search:\n  name: alphago\n", "alphago"),
    ("extract:\n  formats: [step_pears]\n", "step_pears"),
    ("extract:\n  layout: chat\n", "extract.layout"),
    ("env:\n  answer_pattern: 'answer is .*'\n", "env.answer_pattern"),
    ("env:\n  step_check: algebra\n", "env.step_check: unknown step check 'algebra' (known: arithmetic"),
    ("env:\n  options:\n    step_check: nowhere:f\n",
     "env.step_check: step check 'nowhere:f': no module named 'nowhere'"),
    ("env:\n  name: shop\n  step_check: arithmetic\n", "env.step_check is an option of the reasoning"),
    ("problems:\n  options:\n    cnt: 3\n", "problems.options.cnt"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("search: [1, 2]\n", "search must be a mapping"),
])
def test_bad_config_names_key_and_file(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert needle in message
    assert str(path) in message


def test_unknown_search_option_names_the_file(tmp_path):
    path = write(tmp_path, "search:\n  name: mcts\n  options:\n    simulatons: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "simulatons" in str(err.value) and str(path) in str(err.value)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, "search:\n  name: mcts\n")
    cfg = load_config(path, ["run.concurrency=3", "env.delimiter=\"\\n\""])
    assert cfg.run.concurrency == 3 and cfg.env.delimiter == "\n"
    with pytest.raises(ConfigError, match="run.concurrency: expected int, got 'many'"):
        load_config(path, ["run.concurrency=many"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["run.concurrency"])


def test_missing_file_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "search: [unclosed\n"))
