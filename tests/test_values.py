"""Value sources on hand-computed cases with the scripted policy: MC labels, OmegaPRM, self-evaluation,
aggregators."""

from __future__ import annotations

import asyncio
import math

import pytest

from treepref.backends.base import Sampling
from treepref.backends.scripted import ScriptedPolicy
from treepref.envs.reasoning import ReasoningEnv
from treepref.problems import Problem
from treepref.search.base import SearchContext
from treepref.tree import ROOT, Tree
from treepref.verifiers import backup
from treepref.search.math_shepherd import add_path, hard_label, label_path, label_solution, mc_value, soft_label
from treepref.search.omegaprm import find_first_error
from treepref.verifiers.self_eval import SelfEvaluator, two_way_probability

PROBLEM = Problem(id="p", prompt="What is 2 + 3?", answer="5")


async def exact(problem: Problem, answer: str | None) -> float | None:
    return None if answer is None else float(answer.strip() == problem.answer)


def context(script, **kw) -> SearchContext:
    env = ReasoningEnv(verifier=exact)
    return SearchContext(env=env, policy=ScriptedPolicy(script), sampling=Sampling(temperature=1.0), **kw)


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------- Monte Carlo
def test_soft_and_hard_label_three_of_four():
    # From the node after "Add.", completions take candidate i first: three say 5, one says 7.
    script = {(): ["Add."], ("Add.",): ["The answer is 5."] * 3 + ["The answer is 7."]}
    ctx = context(script)
    tree = Tree(problem_id="p", prompt=PROBLEM.prompt, answer="5")
    states = {ROOT: ctx.env.initial(PROBLEM)}
    [node] = run(add_path(tree, states, ["Add."], ctx, complete=False))
    v = run(mc_value(tree, states, node, ctx, 4))
    assert (v.correct, v.total, v.soft, v.hard) == (3, 4, 0.75, True)
    assert (tree.mc_correct[node], tree.mc_total[node]) == (3, 4)
    # completions are kept in the tree as steps, identical ones merged (the three 5s are one node)
    kids = tree.children(node)
    assert [(tree.text[c], tree.samples[c], tree.reward[c]) for c in kids] == [
        ("The answer is 5.", 3, 1.0), ("The answer is 7.", 1, 0.0)]
    assert ctx.policy.stats.requests == 1  # one request with n=4


def test_label_helpers():
    assert hard_label(0, 8) is False and hard_label(1, 8) is True and hard_label(0, 0) is None
    assert soft_label(2, 8) == 0.25 and soft_label(0, 0) is None


# A five-step solution whose first wrong step is step 3: completions that leave the path after one or two
# steps can still say 5; after three or more they cannot. Completion i=0 follows the path (wrong answer),
# i=1 jumps to the alternative.
PATH = ["s1", "s2", "s3", "s4", "The answer is 7."]


def omega_script(steps: tuple[str, ...]):
    k = len(steps)
    if k < len(PATH) and steps == tuple(PATH[:k]):
        return [PATH[k], "The answer is 5." if k < 3 else "The answer is 8."]
    return []


def test_math_shepherd_labels_every_prefix():
    ctx = context(omega_script)
    tree, path, values = run(label_solution(PROBLEM, PATH, ctx, n=2))
    assert [v.soft for v in values] == [0.5, 0.5, 0.0, 0.0, 0.0]
    assert [v.hard for v in values] == [True, True, False, False, False]
    assert values[-1].total == 1 and tree.info[path[-1]]["mc_exact"]  # the final answer is valued exactly
    assert ctx.policy.stats.completions == 4 * 2


def test_omegaprm_finds_first_error_with_log_rollouts():
    ctx = context(omega_script)
    tree = Tree(problem_id="p", prompt=PROBLEM.prompt, answer="5")
    states = {ROOT: ctx.env.initial(PROBLEM)}
    path = run(add_path(tree, states, PATH, ctx))
    res = run(find_first_error(tree, states, path, ctx, n=2))
    # T=5, v_5 = 0 for free; mid=3 -> 0 (hi=3); mid=2 -> 0.5 (lo=3): two estimates of n=2.
    assert res.first_error == 2 and res.complete
    assert (res.evaluations, res.rollouts) == (2, 4)
    assert ctx.policy.stats.completions == 4
    assert res.labels == [True, True, False, False, False]
    assert [tree.scores[n].get("omegaprm") for n in path] == [1.0, 1.0, 0.0, 0.0, 0.0]
    # A second call reuses the counts already on the nodes.
    again = run(find_first_error(tree, states, path, ctx, n=2))
    assert again.first_error == 2 and again.rollouts == 0


def test_omegaprm_budget_and_correct_solution():
    ctx = context(omega_script)
    tree = Tree(problem_id="p", prompt=PROBLEM.prompt, answer="5")
    states = {ROOT: ctx.env.initial(PROBLEM)}
    path = run(add_path(tree, states, PATH, ctx))
    res = run(find_first_error(tree, states, path, ctx, n=2, budget=3))  # room for one estimate only
    assert not res.complete and res.first_error is None and res.rollouts == 2
    assert res.labels == [None, None, False, False, False]
    good = run(add_path(tree, states, ["s1", "The answer is 5."], ctx))
    ok = run(find_first_error(tree, states, good, ctx, n=2))
    assert ok.first_error is None and ok.labels == [True, True] and ok.rollouts == 0


def test_label_path_batches_prefixes_concurrently():
    policy_calls = []
    ctx = context(omega_script)
    tree = Tree(problem_id="p", prompt=PROBLEM.prompt, answer="5")
    states = {ROOT: ctx.env.initial(PROBLEM)}
    path = run(add_path(tree, states, PATH, ctx))
    run(label_path(tree, states, path[:2], ctx, 2))
    policy_calls.extend(ctx.policy.calls)
    assert len(policy_calls) == 2 and all(p.n == 2 and p.stop == () for _, p in policy_calls)


# ---------------------------------------------------------------------------------------- self-evaluation
class FakeScorer:
    def chat_prompt(self, messages):
        return messages[-1]["content"]

    async def score(self, prompts, continuations):
        # " correct" has two tokens at -0.5 each (log P = -1); " incorrect" one token at -2.
        return [[-0.5, -0.5] if c == " correct" else [-2.0] for c in continuations]


def test_self_eval_probability_from_logprobs():
    assert two_way_probability(-1.0, -2.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert two_way_probability(-1000.0, -1001.0) == pytest.approx(1 / (1 + math.exp(-1)))  # stable
    tree = Tree(problem_id="p", prompt=PROBLEM.prompt)
    node = tree.add(ROOT, "2 + 3 = 5")
    [p] = run(SelfEvaluator(FakeScorer()).score_nodes(tree, PROBLEM, [node]))
    expected = math.exp(-1) / (math.exp(-1) + math.exp(-2))
    assert p == pytest.approx(expected) and tree.scores[node]["self_eval"] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------- aggregators
def test_aggregators():
    xs = [0.9, 0.5, 0.8]
    assert backup.get_aggregator("min")(xs) == 0.5
    assert backup.get_aggregator("last")(xs) == 0.8
    assert backup.get_aggregator("product")(xs) == pytest.approx(0.36)
    assert backup.get_aggregator("mean")(xs) == pytest.approx(2.2 / 3)
    assert backup.get_aggregator("max")(xs) == 0.9
    assert backup.get_aggregator("sum")([1, 2]) == 3
    # 1 + 0.5 * 0 + 0.25 * 4 = 2
    assert backup.get_aggregator("discounted:0.5")([1.0, 0.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        backup.get_aggregator("median")
    with pytest.raises(ValueError):
        backup.mean([])


def test_search_shaped_entry_points():
    from treepref.search.math_shepherd import MathShepherdConfig, math_shepherd
    from treepref.search.omegaprm import OmegaPRMConfig, omegaprm

    # Two sampled solutions: candidate 0 follows PATH (wrong), candidate 1 answers 5 at once.
    tree = run(math_shepherd(PROBLEM, context(omega_script), MathShepherdConfig(solutions=2, n=2)))
    labelled = tree.meta["labelled"]  # the sampled solutions' nodes (completions added more)
    assert labelled == sorted(labelled) and all(tree.mc_total[i] > 0 for i in labelled)
    assert [tree.mc_value(i) for i in labelled[:3]] == [0.5, 0.5, 0.0]
    tree = run(omegaprm(PROBLEM, context(omega_script), OmegaPRMConfig(solutions=2, n=2, budget=None)))
    assert tree.meta["stats"]["omegaprm_rollouts"] == 4
    assert [tree.scores[i].get("omegaprm") for i in tree.nodes() if i != ROOT][:3] == [1.0, 1.0, 0.0]
