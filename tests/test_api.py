"""treepref from Python: ``generate`` writes what ``treepref generate`` writes, ``Run.export`` gives the rows
``treepref extract`` writes, resume and recipe refusal behave as on the command line, failures are recorded
and raised only when asked, and ``treepref.search`` runs on a policy object of one's own. No model: the
tutor backend (tests/tutor.py) scripts the steps, through the same code a real backend goes through.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

import treepref
import tutor
from treepref.cli import main
from treepref.tokens import PLAIN

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ["step_pairs", "stepwise", "trees"]


@pytest.fixture
def scripted(tmp_path):
    """The tutor backend registered, and the overrides that make a recipe use it (a model folder that exists,
    so the model check passes without the embedded model)."""
    remove = tutor.register()
    model = tmp_path / "model"
    model.mkdir()
    yield {"model.backend": tutor.NAME, "model.name": str(model)}
    remove()


def write_recipe(folder: Path, **changes) -> Path:
    """A small best-first recipe on built-in arithmetic, as a file (the CLI and the API read the same one)."""
    recipe = {
        "problems": {"source": "arithmetic", "options": {"count": 3, "seed": 0, "difficulty": 2}},
        "env": {"max_depth": 4, "few_shot": "arithmetic:2", "step_check": "arithmetic_derived"},
        "sampling": {"max_tokens": 16, "rollout_max_tokens": 48},
        "search": {"name": "best_first", "options": {"k": 2, "n_rollouts": 1, "max_expansions": 20}},
        "extract": {"formats": FORMATS, "options": {"exact_rejected": "judged"}},
        "run": {"output": str(folder / "run"), "concurrency": 2, "retries": 0},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        recipe[section][name] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def sets(overrides: dict) -> list[str]:
    """The same overrides as the CLI's ``--set`` flags."""
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def trees_of(run: Path) -> dict[str, dict]:
    """Each tree file's JSON, without the one field that is a clock reading (its search's wall time)."""
    out = {}
    for path in sorted((run / "trees").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        data["meta"].pop("wall_time_s")
        out[path.name] = data
    return out


def rows_file(run: Path, fmt: str) -> bytes:
    return (run / "exports" / fmt / "rows.jsonl").read_bytes()


def timeless_rows(run: Path, fmt: str) -> list[dict]:
    """The rows of a format that carries each tree's meta (``trees``), without its wall time."""
    rows = [json.loads(line) for line in rows_file(run, fmt).splitlines()]
    for row in rows:
        meta = json.loads(row["meta"])
        meta.pop("wall_time_s")
        row["meta"] = meta
    return rows


# -- the API against the CLI ---------------------------------------------------------------------------
def test_generate_writes_the_trees_and_rows_the_cli_writes(tmp_path, scripted, capsys):
    recipe = write_recipe(tmp_path)
    assert main(["generate", "-c", str(recipe), "-o", str(tmp_path / "cli"), "--quiet", *sets(scripted)]) == 0
    run = treepref.generate(recipe, tmp_path / "api", overrides=scripted)

    assert isinstance(run, treepref.Run) and run.folder == tmp_path / "api"
    cli, api = trees_of(tmp_path / "cli"), trees_of(run.folder)
    assert list(api) == ["arith-0-0.json", "arith-0-1.json", "arith-0-2.json"] and api == cli
    for fmt in ("step_pairs", "stepwise"):
        assert rows_file(run.folder, fmt) == rows_file(tmp_path / "cli", fmt), fmt
    assert timeless_rows(run.folder, "trees") == timeless_rows(tmp_path / "cli", "trees")
    assert rows_file(run.folder, "step_pairs").strip(), "the tutor's runs have pairs to compare"
    for name in ("config.yaml", "recipe.json"):
        assert (run.folder / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    written = json.loads((tmp_path / "cli" / "summary.json").read_text())
    for key in ("problems", "searched", "failed", "nodes", "generated_tokens", "exports"):
        assert run.summary[key] == written[key], key
    assert run.summary["exports"]["step_pairs"]["label_quality"]["pairs"] > 0  # the arithmetic oracle ran


def test_run_export_gives_the_rows_treepref_extract_writes(tmp_path, scripted, capsys):
    run = treepref.generate(write_recipe(tmp_path), tmp_path / "run", overrides=scripted, extract=False)
    assert not (run.folder / "exports").exists() and run.summary["searched"] == 3
    args = ["--rule", "max_min", "--set", "min_margin=0.5", "--set", "prefix=null"]
    assert main(["extract", str(run.folder), "-f", "step_pairs", *args]) == 0
    written = rows_file(run.folder, "step_pairs")
    pairs = run.export("step_pairs", rule="max_min", min_margin=0.5, prefix=None)
    assert [json.dumps(r, ensure_ascii=False) for r in pairs] == written.decode().splitlines() != []
    assert rows_file(run.folder, "step_pairs") == written  # written again, the same
    # The recipe's exact_rejected is step_pairs' option: another format neither takes it nor trips on it.
    assert len(run.export("trees")) == 3
    assert main(["extract", str(run.folder), "-f", "stepwise"]) == 0
    with pytest.raises(treepref.UserInputError, match="unknown option 'nope'"):
        run.export("trees", nope=1)


def test_a_loaded_run_reads_its_folder(tmp_path, scripted):
    made = treepref.generate(write_recipe(tmp_path), tmp_path / "run", overrides=scripted)
    run = treepref.load_run(made.folder)
    assert run.config.search.name == "best_first" and run.summary == made.summary
    assert run.problems == ["arith-0-0", "arith-0-1", "arith-0-2"]
    trees = run.trees()
    assert not isinstance(trees, list) and [t.problem_id for t in trees] == run.problems
    tree = run.tree("arith-0-1")
    assert isinstance(tree, treepref.Tree) and tree.meta["problem_meta"]["steps"]
    with pytest.raises(treepref.UserInputError, match="no tree for problem 'nope'"):
        run.tree("nope")
    page = run.view(problem="arith-0-2")
    assert page == run.folder / "view.html" and page.stat().st_size > 0
    with pytest.raises(treepref.UserInputError, match="no such problem"):
        run.view(problem="nope")
    with pytest.raises(treepref.ConfigError, match="not a run folder"):
        treepref.load_run(tmp_path)


# -- resume, recipe refusal, mistakes ------------------------------------------------------------------
def test_a_second_generate_resumes_and_a_changed_recipe_is_refused(tmp_path, scripted, capsys):
    recipe, out = write_recipe(tmp_path), tmp_path / "run"
    treepref.generate(recipe, out, overrides=scripted)
    files = {p.name: p.read_bytes() for p in (out / "trees").glob("*.json")}
    built = tutor.TutorPolicy.built

    again = treepref.generate(recipe, out, overrides=scripted)
    assert (again.summary["resumed"], again.summary["searched"]) == (3, 0)
    assert {p.name: p.read_bytes() for p in (out / "trees").glob("*.json")} == files  # nothing duplicated
    assert tutor.TutorPolicy.built == built  # a finished run builds no policy
    assert json.loads((out / "attempts" / "1" / "summary.json").read_text())["searched"] == 3

    changed = {**scripted, "search.options.max_expansions": 9}
    with pytest.raises(treepref.RecipeMismatch) as refused:
        treepref.generate(recipe, out, overrides=changed)
    assert "search differ" in str(refused.value) and "\n" not in str(refused.value)
    capsys.readouterr()
    assert main(["generate", "-c", str(recipe), "-o", str(out), "--quiet", *sets(changed)]) == 2
    assert capsys.readouterr().err == f"treepref: generate error: {refused.value}\n"  # the same line

    forced = treepref.generate(recipe, out, overrides=changed, force=True)
    assert json.loads((out / "recipe.json").read_text())["forced"] == ["search"]
    assert forced.config.search.options["max_expansions"] == 9 and forced.summary["resumed"] == 3


@pytest.mark.parametrize("overrides, error, message", [
    (["search.options.nope=1"], treepref.ConfigError, r"recipe\.yaml: .*unknown option 'nope' for search"),
    (["search.options.k"], treepref.ConfigError,
     r"^override 'search\.options\.k': expected key=value \(section\.key=value in a config\)$"),
    ({"problems.source": "file", "problems.options": {"path": "missing.jsonl"}}, treepref.UserInputError,
     r"recipe\.yaml: problems: .*missing\.jsonl"),
])
def test_mistakes_raise_one_line_before_the_folder_is_touched(tmp_path, scripted, capsys, overrides, error,
                                                                message):
    recipe, out = write_recipe(tmp_path), tmp_path / "run"
    given = overrides if isinstance(overrides, list) else {**scripted, **overrides}
    with pytest.raises(error, match=message) as raised:
        treepref.generate(recipe, out, overrides=given)
    assert "\n" not in str(raised.value) and not out.exists()
    if isinstance(overrides, list):  # the CLI says the same
        assert main(["generate", "-c", str(recipe), "-o", str(out), "--set", overrides[0]]) == 2
        assert str(raised.value) in capsys.readouterr().err


def test_a_recipe_may_be_a_mapping_or_a_config(tmp_path, scripted):
    data = yaml.safe_load(write_recipe(tmp_path).read_text())
    run = treepref.generate(data, tmp_path / "a", overrides=scripted)
    assert run.summary["searched"] == 3 and run.summary["config"] == "<dict>"
    again = treepref.generate(run.config, tmp_path / "b", overrides={"problems.options.count": 1})
    assert again.problems == ["arith-0-0"]
    with pytest.raises(treepref.UserInputError, match="expected a YAML file, a mapping or a Config"):
        treepref.generate(42)


def test_generate_works_where_an_event_loop_runs(tmp_path, scripted):
    """In a notebook a loop is already running in the caller's thread: the run gets a thread of its own."""

    async def in_a_notebook():
        return treepref.generate(write_recipe(tmp_path), tmp_path / "run", overrides=scripted, extract=False)

    assert asyncio.run(in_a_notebook()).summary["searched"] == 3


class Stumbles(tutor.TutorPolicy):
    """The tutor, except that every request for the second problem fails."""

    async def generate(self, prompts, params):
        if any("Compute 6 + 7 + 11" in (p if isinstance(p, str) else PLAIN.decode(p)) for p in prompts):
            raise RuntimeError("the backend fell over")
        return await super().generate(prompts, params)


def test_failed_problems_are_recorded_and_raise_only_when_asked(tmp_path, scripted, caplog):
    remove = tutor.register("stumbles", Stumbles)
    try:
        recipe, out = write_recipe(tmp_path), tmp_path / "run"
        overrides = {**scripted, "model.backend": "stumbles"}
        run = treepref.generate(recipe, out, overrides=overrides)
        assert (run.summary["searched"], run.summary["failed"]) == (2, 1)
        assert run.summary["failures"][0]["problem_id"] == "arith-0-1" and (out / "errors.jsonl").exists()
        assert f"1 of 3 problems failed; details in {out / 'errors.jsonl'}" in caplog.text
        with pytest.raises(treepref.ProblemsFailed, match="1 of 3 problems failed") as raised:
            treepref.generate(recipe, out, overrides=overrides, allow_failures=False)  # retried, failed again
        assert raised.value.run.summary["failed"] == 1 and raised.value.run.summary["resumed"] == 2
    finally:
        remove()


# -- treepref.search on a policy of one's own ----------------------------------------------------------
class Adder:
    """A policy of one's own: only the protocol of treepref.backends.base.Policy, nothing of treepref's.
    It adds 1 + 1 in one step, then states the answer; odd samples slip (1 + 1 = 3)."""

    def __init__(self) -> None:
        self.requests = 0

    def chat_prompt(self, messages):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def encode(self, text):
        return PLAIN.encode(text)

    def decode(self, token_ids):
        return PLAIN.decode(token_ids)

    def count_tokens(self, text):
        return len(PLAIN.encode(text))

    async def generate(self, prompts, params):
        from treepref.backends.base import Completion

        self.requests += 1
        out = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else PLAIN.decode(prompt)
            done = [s for s in text.rpartition("assistant: ")[2].split("\n\n") if s.strip()]
            row = []
            for i in range(params.n):
                result = 2 if i % 2 == 0 else 3
                if done:  # carry on from a written step: its result is the answer
                    result = int(done[0].rpartition("= ")[2])
                steps = [f"1 + 1 = {result}", f"The answer is {result}."][len(done):]
                body = steps[0] + "\n\n" if params.stop and len(steps) > 1 else "\n\n".join(steps)
                ids = tuple(PLAIN.encode(body))
                stop = "\n\n" if body.endswith("\n\n") else None
                row.append(Completion(body, ids, -1.0 * len(ids), "stop", stop, (-1.0,) * len(ids)))
            out.append(row)
        return out


def test_search_runs_on_a_policy_of_ones_own(tmp_path):
    from treepref.extract import export
    from treepref.problems import Problem

    policy = Adder()
    problems = [Problem("mine", "What is 1 + 1?", "2"), {"id": "row", "prompt": "What is 1 + 1?", "answer": 2},
                "What is 1 + 1?"]
    trees = asyncio.run(treepref.search(problems, env="reasoning", policy=policy, sampling={"max_tokens": 16},
                                        simulations=4, k=2))
    assert [t.problem_id for t in trees] == ["mine", "row", "problems-3"] and policy.requests > 0
    mine = trees[0]
    assert mine.meta["search"] == "mcts" and mine.meta["generated_tokens"] > 0  # annotated as a run's trees
    steps = {mine.text[c]: mine.value(c) for c in mine.children(0)}
    assert steps == {"1 + 1 = 2": 1.0, "1 + 1 = 3": 0.0}
    pairs, _ = export(trees[:2], "step_pairs", template=policy.chat_prompt, prefix=None, min_visits=None)
    assert {(r["chosen"], r["rejected"]) for r in pairs} == {("1 + 1 = 2\n\n", "1 + 1 = 3\n\n")}
    assert not (tmp_path / "trees").exists()  # no run folder anywhere


def test_search_refuses_bad_input_in_one_line_and_raises_what_a_search_raises():
    with pytest.raises(treepref.UserInputError, match="problems:1: expected a Problem, a mapping or a prompt"):
        asyncio.run(treepref.search([42], env="reasoning", policy=Adder()))
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        asyncio.run(treepref.search(["What is 1 + 1?"], env="reasoning", policy=Adder(), nope=1))
    with pytest.raises(ValueError, match="sampling.tempo"):
        asyncio.run(treepref.search(["What is 1 + 1?"], env="reasoning", policy=Adder(), sampling={"tempo": 1}))

    class Broken(Adder):
        async def generate(self, prompts, params):
            raise RuntimeError("my policy is broken")

    with pytest.raises(RuntimeError, match="my policy is broken"):
        asyncio.run(treepref.search(["What is 1 + 1?"], env="reasoning", policy=Broken()))


def test_treepref_search_is_still_the_package_of_searches():
    from treepref.search import get_search
    from treepref.search.mcts import mcts

    assert treepref.search.get_search("mcts") is get_search("mcts") is mcts and callable(treepref.search)


def test_treepref_train_is_the_command_and_still_the_package_of_trainers(tmp_path):
    """``treepref.train(recipe)`` trains as ``treepref train`` does (a bad data path: the command's one line,
    before any model loads); ``treepref.train.trainer`` is the module it was."""
    from treepref.train import trainer

    assert treepref.train.trainer is trainer and callable(treepref.train)
    missing = tmp_path / "missing"
    with pytest.raises(treepref.UserInputError) as caught:
        treepref.train({"method": "dpo", "data": str(missing)}, tmp_path / "out")
    assert str(caught.value) == f"{missing}: no such file or folder"
    with pytest.raises(treepref.ConfigError, match="method must be one of"):
        treepref.train({"method": "sft", "data": str(missing)})


# -- the README's example ------------------------------------------------------------------------------
def test_the_readme_example_runs_as_written(tmp_path, scripted, monkeypatch, capsys):
    """README.md's Python example, copied out of the page, on the tutor backend (one override added)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python"):]
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(source.splitlines()) <= 15
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    monkeypatch.chdir(tmp_path)
    real = treepref.generate

    def on_the_tutor(config, output=None, *, overrides=None, **options):
        return real(config, output, overrides={**(overrides or {}), **scripted}, **options)

    monkeypatch.setattr(treepref, "generate", on_the_tutor)
    exec(compile(source, "README.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert re.search(r"^8 trees, [1-9]\d* step pairs, [1-9]\d* labelled paths$", out, re.M), out
    assert (tmp_path / "runs" / "demo-python" / "view.html").exists()
