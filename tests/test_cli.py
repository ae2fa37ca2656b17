"""The CLI end to end with the real model: bad problem rows reported, trees and pairs written, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from treepref.cli import main

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model_dir):
    """One real (tiny) run over a problems file with malformed rows, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    problems = tmp / "problems.jsonl"
    shutil.copy(DATA / "problems_mixed.jsonl", problems)
    recipe = tmp / "recipe.yaml"
    recipe.write_text(f"""
model: {{name: {model_dir}, backend: hf}}
problems: {{source: file, options: {{path: {problems}, count: 2}}}}
env: {{max_depth: 2, max_tokens: 64}}
sampling: {{temperature: 1.0, max_tokens: 12, rollout_max_tokens: 24}}
search: {{name: mcts, options: {{simulations: 3, k: 2, n_rollouts: 1}}}}
extract: {{formats: [step_pairs, trees]}}
run: {{output: {tmp / 'run'}, concurrency: 2}}
""")
    assert main(["generate", "-c", str(recipe), "--quiet"]) == 0
    return tmp / "run", problems


def test_bad_rows_are_reported_and_the_run_goes_on(run_dir):
    out, problems = run_dir
    errors = [json.loads(line) for line in (out / "problem_errors.jsonl").read_text().splitlines()]
    # Every bad row of the file is named with its file, line and a reason.
    assert {e["line"] for e in errors} >= {3, 4, 5, 7, 8, 10}
    assert all(e["file"] == str(problems) and e["reason"] for e in errors)
    assert any(e["field"] == "prompt" for e in errors)
    trees = sorted(p.name for p in (out / "trees").glob("*.json"))
    assert trees == ["p1.json", "p2.json"]  # the first two good rows (count: 2)


def test_summary_trees_and_exports_load(run_dir):
    import datasets

    from treepref.tree import Tree

    out, _ = run_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["searched"] == 2 and summary["failed"] == 0
    assert summary["generated_tokens"] > 0 and summary["nodes"] > 2 and summary["wall_time_s"] > 0
    tree = Tree.load(out / "trees" / "p1.json")
    assert len(tree.children(0)) >= 1 and tree.meta["search"] == "mcts"
    # a step is at most one expansion (12 tokens) or one completion (24) long, and it keeps its ids
    assert all(n <= 24 and n == len(ids) for n, ids in zip(tree.n_tokens[1:], tree.token_ids[1:]))
    assert tree.prompt_ids(0) == tree.token_ids[0] and len(tree.token_ids[0]) > 0
    pairs = datasets.load_from_disk(str(out / "exports" / "step_pairs" / "dataset"))
    assert {"prompt", "chosen", "rejected", "chosen_value", "rejected_value"} <= set(pairs.column_names)
    trees = datasets.load_from_disk(str(out / "exports" / "trees" / "dataset"))
    assert sorted(trees["problem_id"]) == ["p1", "p2"]
    stats = json.loads((out / "exports" / "step_pairs" / "stats.json").read_text())
    assert stats["rows"] == len(pairs)


def no_model(monkeypatch):
    """Fail the test if a backend is built."""
    import treepref.backends

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run loaded the model")

    monkeypatch.setattr(treepref.backends, "make_policy", refuse)


def test_rerun_resumes_and_extract_writes_another_format(run_dir, capsys, monkeypatch):
    out, _ = run_dir
    before = {p.name: p.stat().st_mtime_ns for p in (out / "trees").glob("*.json")}
    no_model(monkeypatch)  # every problem has its tree: nothing to generate, no model to load
    assert main(["generate", "-c", str(out / "config.yaml"), "--quiet", "--no-extract"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == 2 and summary["searched"] == 0
    assert summary["total_wall_time_s"] < 5
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trees").glob("*.json")} == before
    from treepref.extract import FORMATS

    capsys.readouterr()
    args = ["extract", str(out)] + [x for fmt in FORMATS for x in ("--format", fmt)]
    assert main(args) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(FORMATS)
    for fmt in FORMATS:  # every format writes its dataset, a readable copy and its statistics
        folder = out / "exports" / fmt
        assert (folder / "dataset").is_dir() and (folder / "rows.jsonl").exists()
        assert json.loads((folder / "stats.json").read_text())["format"] == fmt


def test_config_errors_exit_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  name: mcts\n  options: {simulations: many}\n")
    assert main(["generate", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "simulations" in err and str(bad) in err


def test_an_extract_option_a_format_does_not_take_is_one_line(run_dir, capsys):
    out, _ = run_dir
    capsys.readouterr()
    assert main(["extract", str(out), "--format", "ranked_lists", "--set", "prefix=null"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("treepref: extract error: unknown option 'prefix': none of the formats ['ranked_lists']")
    assert "\n" not in err and "Traceback" not in err


def test_evaluate_rejects_a_missing_model_folder_in_one_line(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"treepref: evaluate error: {tmp_path / 'nope'}: no such model folder"


@pytest.mark.parametrize("override,message", [
    ("problems.source=file", "problems: problems source 'file' needs"),
    ("problems.source=bogus", "problems: unknown problems source 'bogus'"),
    ("model.name=/no/such/model", "model '/no/such/model': no such model folder"),
    ("model.name=someorg/somemodel", "model 'someorg/somemodel': not a local folder nor in the hub cache"),
    ("extract.options={min_margn: 0.3}", "extract.options: unknown option 'min_margn'"),
    ("extract.formats=[nope]", "extract.formats: unknown format 'nope'"),
])
def test_generate_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["generate", "-c", "configs/demo.yaml", "-o", str(out), "--quiet", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not out.exists()


def test_code_without_the_sandbox_boundary_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """No bubblewrap (simulated: TREEPREF_BWRAP names nothing): the code recipe exits 2 before the model loads,
    saying what is missing and how to get it, and writes nothing."""
    monkeypatch.setenv("TREEPREF_BWRAP", str(tmp_path / "no-bwrap"))
    out = tmp_path / "run"
    assert main(["generate", "-c", "configs/code.yaml", "-o", str(out), "--quiet", "--set",
                 "problems.options.count=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("treepref: generate error: configs/code.yaml: environment 'code': the code sandbox "
                          "needs bubblewrap") and "apt-get install bubblewrap" in err, err
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_a_missing_problems_file_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["generate", "-c", "configs/demo.yaml", "-o", str(out), "--quiet", "--set", "problems.source=file",
            "--set", f"problems.options.path={tmp_path / 'nope.jsonl'}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"treepref: generate error: configs/demo.yaml: problems: problems path not found: {tmp_path / 'nope.jsonl'}"
    assert not out.exists()


def test_help_lists_searches_backends_formats_and_rules_without_markup(capsys):
    from treepref.extract import FORMATS, RULES
    from treepref.search import SEARCHES

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in [*SEARCHES, *FORMATS, *RULES, "hf", "vllm", "openai"]:
        assert f"\n  {name} " in out, name
    assert "``" not in out and "train" in out and "view" in out


@pytest.mark.parametrize("override,part", [
    ("search.options.simulations=4", "search"),
    ("sampling.temperature=0.5", "sampling"),
    ("problems.options.count=1", "problems"),
    ("model.backend=vllm", "model"),
    ("env.max_depth=3", "env"),
])
def test_a_rerun_with_another_recipe_is_refused_and_force_continues(run_dir, tmp_path, capsys, monkeypatch,
                                                                    override, part):
    out = tmp_path / "run"
    shutil.copytree(run_dir[0], out)
    config, summary = (out / "config.yaml").read_bytes(), (out / "summary.json").read_bytes()
    attempts = sorted(p.name for p in (out / "attempts").iterdir()) if (out / "attempts").exists() else []
    no_model(monkeypatch)
    args = ["generate", "-c", str(out / "config.yaml"), "-o", str(out), "--quiet", "--no-extract", "--set", override]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"treepref: generate error: {out} holds the trees of another recipe ({part} differ from "
                   f"{out / 'config.yaml'}); write to another --output, or pass --force to continue this run with "
                   "the new recipe")
    # nothing written: the run folder still describes its own recipe and its last attempt
    assert (out / "config.yaml").read_bytes() == config and (out / "summary.json").read_bytes() == summary
    assert (sorted(p.name for p in (out / "attempts").iterdir()) if attempts else []) == attempts

    assert main(args + ["--force"]) == 0  # the trees are kept and resumed (count=1: one of them)
    assert json.loads((out / "recipe.json").read_text())["forced"] == [part]
    previous = out / "attempts" / str(len(attempts) + 1)  # the attempt before this one, as it was
    assert (previous / "config.yaml").read_bytes() == config and (previous / "summary.json").read_bytes() == summary
    assert main(args) == 0  # the new recipe is the run's now


def test_a_change_outside_the_recipe_is_not_a_mismatch(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(run_dir[0], out)
    no_model(monkeypatch)
    for override in ("run.concurrency=1", "extract.formats=[trees]", "model.options={num_threads: 2}"):
        assert main(["generate", "-c", str(out / "config.yaml"), "-o", str(out), "--quiet", "--set", override]) == 0


def test_failures_exit_nonzero_and_stale_errors_move_to_history(tmp_path, model_dir, capsys):
    """Every request times out: the run exits 1 and says where the details are (0 with --allow-failures);
    a clean rerun leaves no stale errors.jsonl, and attempts/<n>/ keeps each attempt's records."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)})
                                + "\n" for i in range(2)))
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
model: {{name: {model_dir}, backend: hf}}
problems: {{source: file, options: {{path: {problems}}}}}
env: {{max_depth: 2, max_tokens: 32}}
sampling: {{max_tokens: 8, rollout_max_tokens: 16}}
search: {{name: mcts, options: {{simulations: 2, k: 2, n_rollouts: 1}}}}
extract: {{formats: [trees]}}
run: {{output: {out}, retries: 0, request_timeout_s: 0.001}}
""")
    args = ["generate", "-c", str(recipe), "--quiet"]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"2 of 2 problems failed; details in {out / 'errors.jsonl'}" in err and "--allow-failures" in err
    assert "failed q0 (timeout): TimeoutError: a policy request took over 0.001 s" in err
    assert main(args + ["--allow-failures"]) == 0
    assert main(args + ["--set", "run.request_timeout_s=null"]) == 0
    assert not (out / "errors.jsonl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["searched"], summary["failed"]) == (2, 0)
    for n in ("1", "2"):
        errors = [json.loads(line) for line in (out / "attempts" / n / "errors.jsonl").read_text().splitlines()]
        assert sorted(e["problem_id"] for e in errors) == ["q0", "q1"] and {e["reason"] for e in errors} == {"timeout"}
        assert json.loads((out / "attempts" / n / "summary.json").read_text())["failed"] == 2
    assert sorted(p.name for p in (out / "attempts").iterdir()) == ["1", "2"]
