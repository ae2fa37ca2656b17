"""Spending the budget: widening successful paths, the run's shared pool, merged near-duplicate siblings,
pairs deep in a solution, and flat sampling cut back to a search's spend."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest

from test_search_common import make_ctx, node_by_steps, run
from treepref.backends.scripted import EOS, ScriptedPolicy
from treepref.extract import export
from treepref.extract.quality import pair_label_quality
from treepref.problems import Problem
from treepref.runner import load_trees, run_problems
from treepref.search.base import expand, new_tree, rollouts
from treepref.search.best_first import BestFirstConfig, best_first
from treepref.search.mcts import MCTSConfig, mcts
from treepref.search.sample import SampleConfig, first_solutions, sample
from treepref.search.spend import TokenPool, successful_path_nodes
from treepref.tree import ROOT

ONE_PLUS_ONE = Problem("p1", "What is 1 + 1?", answer="2")


def endless_wrong_answers():
    """Root: one step, "1 + 1 = 2". Below it each request's first sample is the right answer and every other
    sample a wrong answer never written before, so widening that node always finds something new."""
    wrong = itertools.count(3)
    return lambda steps: ["1 + 1 = 2"] if not steps else ["The answer is 2." + EOS, f"The answer is {next(wrong)}." + EOS]


def test_a_tree_whose_search_ends_early_keeps_widening_until_its_budget():
    # Hand count (PLAIN: a word with its trailing whitespace is a token; the delimiter rides on the last one):
    # the search proper expands the root (k=2: "1 + 1 = 2" twice, 2 x 5 tokens; both merged, so the request is
    # made once more: 10 more), values its one child by one completion ("The answer is 2." = 4) and expands
    # that child (the right answer and a wrong one, 2 x 4): 32 tokens, and its frontier is empty.
    cfg = dict(k=2, n_rollouts=1, stop_at_correct=False)
    short = run(best_first(ONE_PLUS_ONE, make_ctx(endless_wrong_answers()), BestFirstConfig(**cfg, fill_budget=False,
                                                                                           token_budget=60)))
    assert short.meta["generated_tokens"] == 32
    tree = run(best_first(ONE_PLUS_ONE, make_ctx(endless_wrong_answers()), BestFirstConfig(**cfg, token_budget=60)))
    # Widening, least widened first, then deepest: "1 + 1 = 2" (8 tokens: 40), the root (10: 50; both samples
    # merged into "1 + 1 = 2"), "1 + 1 = 2" (58), the root again (68, the first count >= 60; a second round
    # that wrote nothing new retires it)
    assert tree.meta["generated_tokens"] == 68
    assert tree.meta["stats"]["spend"] == {"rounds": 4, "widened": 2, "retired": 1, "drawn": 0, "deposited": 0}
    step = node_by_steps(tree, ["1 + 1 = 2"])
    answers = [tree.text[c] for c in tree.children(step)]
    assert answers[0] == "The answer is 2." and len(answers) == len(set(answers)) == 2 + 2
    # each wrong answer is a final child valued by its reward; the right one was written again each round and
    # backed up each time, so the step's value stays the mean of what the policy wrote below it
    assert [tree.value(c) for c in tree.children(step)] == [1.0, 0.0, 0.0, 0.0]
    # backed up through it: its completion (1) and two children (1, 0); round one (1, 0); the root's round
    # (its two samples merged into the step: the step's value then, 3 / 5, twice); round three (1, 0); the
    # root's second round (the value then, 5.2 / 9, twice)
    assert tree.samples[tree.children(step)[0]] == 4 and tree.visits[step] == 11  # written by the completion too
    assert tree.value(step) == pytest.approx((5.2 + 2 * 5.2 / 9) / 11)


def test_mcts_spends_its_budget_too_and_not_without_one():
    cfg = dict(simulations=3, k=2, n_rollouts=1)
    tree = run(mcts(ONE_PLUS_ONE, make_ctx(endless_wrong_answers()), MCTSConfig(**cfg, token_budget=80)))
    assert 80 <= tree.meta["generated_tokens"] < 80 + 10  # within one round (at most 10 tokens) past it
    assert tree.meta["stats"]["spend"]["rounds"] > 0
    free = run(mcts(ONE_PLUS_ONE, make_ctx(endless_wrong_answers()), MCTSConfig(**cfg)))
    assert "spend" not in free.meta["stats"] and free.meta["generated_tokens"] < 80


class ByQuestion:
    """Two scripted worlds behind one policy: a prompt that asks ``question`` goes to ``inner``, any other to
    ``other`` (the runner shares one policy between problems)."""

    def __init__(self, question: str, inner: ScriptedPolicy, other: ScriptedPolicy):
        self.question, self.inner, self.other = question, inner, other

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def generate(self, prompts, params):
        policy = self.inner if self.question in self.inner.decode(prompts[0]) else self.other
        return await policy.generate(prompts, params)


def always_wrong(steps):
    return ["1 + 1 = 2"] if not steps else ["The answer is 3." + EOS]


def test_a_tree_with_no_successful_path_widens_its_deepest_open_nodes_until_nothing_new_comes():
    # the search proper: 20 (root, as above) + 4 (completion) + 16 (the child's two samples merged, so asked
    # twice): 40. Widening, deepest first: the step (8: 48), the root (10: 58), the step again (66: its second
    # round with nothing new retires it), the root again (76: retired): nothing is left open
    tree = run(best_first(ONE_PLUS_ONE, make_ctx(always_wrong), BestFirstConfig(k=2, n_rollouts=1,
                                                                                stop_at_correct=False,
                                                                                token_budget=100)))
    assert successful_path_nodes(tree) == set()
    assert tree.meta["generated_tokens"] == 76
    assert tree.meta["stats"]["spend"] == {"rounds": 4, "widened": 2, "retired": 2, "drawn": 0, "deposited": 0}


def test_the_run_pool_moves_what_an_unsolved_tree_left_to_a_tree_that_can_use_it(tmp_path):
    # the unsolved tree spends 76 of its 100 (as above) and leaves 24 to the pool
    problems = [Problem("solved", "What is 1 + 1?", answer="2"), Problem("unsolved", "What is 2 - 1?", answer="1")]
    cfg = BestFirstConfig(k=2, n_rollouts=1, stop_at_correct=False, token_budget=100)

    def ctx():
        c = make_ctx(endless_wrong_answers())
        return dataclasses.replace(c, policy=ByQuestion("What is 1 + 1?", c.policy, ScriptedPolicy(always_wrong)))

    run(run_problems(problems, best_first, cfg, ctx(), tmp_path / "alone", concurrency=2, progress=False))
    alone = {t.problem_id: t for t in load_trees(tmp_path / "alone")}
    # the solved tree alone: 68 as in the first test, then rounds of 8 (the root is retired) to 100
    assert {p: t.meta["generated_tokens"] for p, t in alone.items()} == {"solved": 100, "unsolved": 76}
    run(run_problems(problems, best_first, cfg, ctx(), tmp_path / "shared", concurrency=2, progress=False,
                     share_budget=True))
    shared = {t.problem_id: t for t in load_trees(tmp_path / "shared")}
    solved, unsolved = shared["solved"], shared["unsolved"]
    assert unsolved.meta["generated_tokens"] == 76 and unsolved.meta["stats"]["spend"]["deposited"] == 24
    spend = solved.meta["stats"]["spend"]
    # 100 + 24 = 124 to spend, drawn in grants of at most 100 // 4 = 25: rounds of 8 from 100 reach 124
    assert spend["drawn"] == 24 and solved.meta["generated_tokens"] == 124 and spend["deposited"] == 0


def test_the_pool_gives_nothing_once_every_open_tree_is_waiting():
    async def go():
        pool = TokenPool()
        pool.open()
        pool.open()
        first = asyncio.ensure_future(pool.draw(10))
        await asyncio.sleep(0)
        assert not first.done()  # the other tree may still deposit
        await pool.deposit(4)
        assert await first == 4
        second = asyncio.ensure_future(pool.draw(10))
        await asyncio.sleep(0)
        await pool.close()  # the other tree finished without depositing: nobody else can
        assert await second == 0
        return pool

    pool = run(go())
    assert (pool.deposited, pool.granted, pool.available) == (4, 4, 0)


def test_near_duplicate_siblings_are_merged_and_counted():
    ctx = make_ctx({(): ["1 + 1 = 2", "1+1=2", "1 + 1 = 2.", "1 +  1 = 2", "1 + 1 = 3"]})
    tree, states = new_tree(ONE_PLUS_ONE, ctx, "test", {})
    children = run(expand(tree, states, ROOT, ctx, k=5))
    assert [tree.text[c] for c in children] == ["1 + 1 = 2", "1 + 1 = 3"]
    assert [tree.samples[c] for c in children] == [4, 1]
    assert tree.meta["merged_samples"] == 3
    assert tree.meta["generated_tokens"] == 5 + 1 + 5 + 5 + 5  # every sample's tokens are still spent


THREE_STEPS = Problem("arith", "Compute (1 + 1) * 3 - 2. Work one operation per step.", answer="4",
                      meta={"difficulty": 3, "expression": "(1 + 1) * 3 - 2", "intermediates": [2, 6, 4],
                            "steps": ["1 + 1 = 2", "2 * 3 = 6", "6 - 2 = 4"]})


def three_step_script():
    """The right solution, except that below two right steps every other sample slips ("6 - 2 = 5", then
    "6 - 2 = 3", ...): the pairs to find lie at depth 3."""
    slips = itertools.count(5)
    script = {(): ["1 + 1 = 2"], ("1 + 1 = 2",): ["2 * 3 = 6"], ("1 + 1 = 2", "2 * 3 = 6", "6 - 2 = 4"):
              ["The answer is 4." + EOS]}

    def next_steps(steps):
        if steps == ("1 + 1 = 2", "2 * 3 = 6"):
            return ["6 - 2 = 4", f"6 - 2 = {next(slips)}"]
        return script.get(steps, [])
    return next_steps


def test_a_pair_at_depth_three_is_extracted_under_its_right_prefix():
    ctx = make_ctx(three_step_script(), step_check="arithmetic")
    tree = run(best_first(THREE_STEPS, ctx, BestFirstConfig(k=2, n_rollouts=1, stop_at_correct=False,
                                                              token_budget=200)))
    ds, _ = export([tree], "step_pairs", rule="max_min", prefix="value", exact_rejected="judged")
    rows = list(ds)
    deep = [r for r in rows if r["depth"] == 3]
    assert deep, [(r["depth"], r["chosen"], r["rejected"]) for r in rows]
    assert all(r["prefix_steps"] == ["1 + 1 = 2", "2 * 3 = 6"] for r in deep)
    assert all(r["chosen"].startswith("6 - 2 = 4") and r["rejected"].startswith("6 - 2 = ") for r in deep)
    quality = pair_label_quality(deep, {THREE_STEPS.id: THREE_STEPS})
    assert quality["good"] == quality["pairs"] == len(deep)
    # margin pairs: the right step against every slip the widening wrote below the same prefix
    margin, stats = export([tree], "step_pairs", rule="margin", prefix="value", exact_rejected="judged")
    slips = [c for c in tree.children(node_by_steps(tree, ["1 + 1 = 2", "2 * 3 = 6"])) if tree.value(c) == 0.0]
    assert sum(r["depth"] == 3 for r in margin) == len(slips) >= 3
    assert stats["depth_histogram"] == {"3": len(slips)}


def test_flat_sampling_cut_back_to_a_spend_keeps_its_first_solutions():
    # whole solutions of one step, 4 tokens each: sample i of a request is right for even i, wrong for odd i
    ctx = make_ctx({(): ["The answer is 2." + EOS, "The answer is 3." + EOS]})
    tree = run(sample(ONE_PLUS_ONE, ctx, SampleConfig(n=4, token_budget=30)))  # two requests: 8 solutions
    assert [cost for _, cost, _ in tree.meta["solutions"]] == [4] * 8 and tree.meta["generated_tokens"] == 32
    right, wrong = node_by_steps(tree, ["The answer is 2."]), node_by_steps(tree, ["The answer is 3."])
    assert [v for _, _, v in tree.meta["solutions"]] == [1.0, 0.0] * 4
    cut = first_solutions(tree, 13)  # 12 (three solutions) is nearer 13 than 16 (four)
    assert cut.meta["generated_tokens"] == 12 and len(cut.meta["solutions"]) == 3
    assert cut.meta["cut_from_tokens"] == 32
    r, w = node_by_steps(cut, ["The answer is 2."]), node_by_steps(cut, ["The answer is 3."])
    assert (cut.samples[r], cut.samples[w]) == (2, 1) and (tree.samples[right], tree.samples[wrong]) == (4, 4)
    assert (cut.visits[ROOT], cut.value(ROOT), cut.value(r), cut.value(w)) == (3, 2 / 3, 1.0, 0.0)
    assert (cut.mc_total[ROOT], cut.mc_correct[ROOT]) == (3, 2)
    assert cut.token_ids[r] == tree.token_ids[right] and cut.prompt_ids(r) == tree.prompt_ids(right)
    one = first_solutions(tree, 5)  # one solution: the wrong answer is not in the trie
    assert len(one) == 2 and one.text[1] == "The answer is 2."
    assert first_solutions(tree, 1).meta["generated_tokens"] == 0  # nearer nothing than one solution
    assert first_solutions(tree, 1000).meta["generated_tokens"] == 32


def test_no_widening_below_a_step_the_step_check_could_not_verify():
    # a path through prose ("Let us add.") reaches the answer; the step check verified nothing on it, so
    # only the root is widened (its round samples the same prose again: retired after two), never the prose
    wrong = itertools.count(3)
    script = lambda steps: (["Let us add."] if not steps else  # noqa: E731
                            ["The answer is 2." + EOS, f"The answer is {next(wrong)}." + EOS])
    tree = run(best_first(ONE_PLUS_ONE, make_ctx(script, step_check="arithmetic"),
                          BestFirstConfig(k=2, n_rollouts=1, stop_at_correct=False, token_budget=200)))
    prose = node_by_steps(tree, ["Let us add."])
    assert tree.info[prose]["step_check"] is None and prose in successful_path_nodes(tree)
    assert len(tree.children(prose)) == 2  # what the search proper wrote, nothing more
    assert tree.meta["stats"]["spend"] == {"rounds": 2, "widened": 1, "retired": 1, "drawn": 0, "deposited": 0}


def test_the_yield_bench_compares_at_equal_spend_and_writes_every_field(tmp_path):
    """The harness on the scripted policy: one record per search, seed and export with the fields the issue
    asks for, flat cut to the tree's spend problem by problem, and the pooled table beside it."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "yield.py"
    spec = importlib.util.spec_from_file_location("yield_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "yield"
    assert bench.main(["--backend", "scripted", "--problems", "3", "--seeds", "0,1", "--difficulty", "2",
                       "--searches", "best_first", "--bootstrap", "50", "--out", str(out),
                       "--keep", str(tmp_path / "trees")]) == 0
    records = json.loads(out.with_suffix(".json").read_text())
    assert {r["search"] for r in records} == {"best_first", "flat@best_first"}
    assert len(records) == 2 * 2 * len(bench.EXPORTS)
    for r in records:
        for key in ("search", "difficulty", "seed", "filters", "budget_tokens", "spent_tokens", "pairs", "good",
                    "good_share", "good_per_1m_tokens", "good_per_problem", "depth_histogram"):
            assert key in r
    for tree in (r for r in records if r["search"] == "best_first"):
        flat = next(r for r in records if r["search"] == "flat@best_first" and r["seed"] == tree["seed"]
                    and r["filters"] == tree["filters"])
        flat_trees = {t.problem_id: t for t in load_trees(tmp_path / "trees" / f"sample-d2-s{tree['seed']}")}
        for pid, spent in tree["spent_by_problem"].items():  # flat stops at the nearest whole solution
            costs = [cost for _, cost, _ in flat_trees[pid].meta["solutions"]]
            assert flat_trees[pid].meta["generated_tokens"] >= spent
            assert abs(flat["spent_by_problem"][pid] - spent) <= max(costs) / 2
    pooled = json.loads(out.with_name("yield-pooled.json").read_text())
    assert {p["seeds"] == [0, 1] for p in pooled} == {True}
    assert "tree ÷ flat" in out.with_suffix(".md").read_text()
    # --reuse re-exports the kept trees without searching: the same records, no wall time
    reread, kept = tmp_path / "reread", sorted((tmp_path / "trees").rglob("*.json"))
    written = [f.stat().st_mtime_ns for f in kept]
    assert bench.main(["--backend", "scripted", "--problems", "3", "--seeds", "0,1", "--difficulty", "2",
                       "--searches", "best_first", "--bootstrap", "50", "--out", str(reread),
                       "--keep", str(tmp_path / "trees"), "--reuse"]) == 0
    reused = json.loads(reread.with_suffix(".json").read_text())
    assert {r["wall_s"] for r in reused} == {None} and [f.stat().st_mtime_ns for f in kept] == written
    assert [{**r, "wall_s": None} for r in reused] == [{**r, "wall_s": None} for r in records]
    # --add pools another seed into the same result; a seed measured again replaces its records
    for seeds in ("2", "1"):
        assert bench.main(["--backend", "scripted", "--problems", "3", "--seeds", seeds, "--difficulty", "2",
                           "--searches", "best_first", "--bootstrap", "50", "--out", str(out), "--add"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert len(again) == 3 * 2 * len(bench.EXPORTS) and sorted({r["seed"] for r in again}) == [0, 1, 2]
    assert [r for r in again if r["seed"] == 0] == [r for r in records if r["seed"] == 0]
    pooled = json.loads(out.with_name("yield-pooled.json").read_text())
    assert {p["seeds"] == [0, 1, 2] for p in pooled} == {True}


def test_a_completion_by_step_ends_at_the_first_slip_and_generates_nothing_past_it():
    # PLAIN tokens: "1 + 1 = 3" is 5 with the delimiter on its last word, "The answer is 2." 4. A whole
    # completion writes both (9 tokens) and the tree keeps only the slip, which the step check ended; by step,
    # the slip's request is the last (5 tokens). The outcome and the tree are the same either way.
    script = {(): ["1 + 1 = 3"], ("1 + 1 = 3",): ["The answer is 2." + EOS]}
    for by_step, tokens, requests in ((False, 9, 1), (True, 5, 1)):
        ctx = dataclasses.replace(make_ctx(script, step_check="arithmetic"), rollout_by_step=by_step)
        tree, states = new_tree(ONE_PLUS_ONE, ctx, "test", {})
        [(last, reward)] = run(rollouts(tree, states, ROOT, ctx, 1))
        assert (tree.text[last], tree.is_final(last), reward, len(tree)) == ("1 + 1 = 3", True, 0.0, 2)
        assert (tree.meta["generated_tokens"], tree.meta["policy_requests"]) == (tokens, requests)
    # a right path costs the same tokens by step (one request per step) and reaches the same outcome
    script = {(): ["1 + 1 = 2"], ("1 + 1 = 2",): ["The answer is 2." + EOS]}
    for by_step, requests in ((False, 1), (True, 2)):
        ctx = dataclasses.replace(make_ctx(script, step_check="arithmetic"), rollout_by_step=by_step)
        tree, states = new_tree(ONE_PLUS_ONE, ctx, "test", {})
        [(last, reward)] = run(rollouts(tree, states, ROOT, ctx, 1))
        assert (tree.steps(last), reward) == (["1 + 1 = 2", "The answer is 2."], 1.0)
        assert (tree.meta["generated_tokens"], tree.meta["policy_requests"]) == (9, requests)


def test_the_recipe_sampling_section_turns_completions_by_step_on():
    from treepref.config import SamplingSection
    from treepref.context import search_context

    scripted = make_ctx({})
    ctx = search_context(scripted.env, scripted.policy, SamplingSection(rollout_by_step=True))
    assert ctx.rollout_by_step is True
    assert search_context(ctx.env, ctx.policy, SamplingSection()).rollout_by_step is False
