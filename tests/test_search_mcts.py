"""MCTS/PUCT: the selection rule and backups against hand-computed numbers, virtual loss, budgets, golden."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path

import pytest

from test_search_common import (PROBLEM, check_golden, check_visits, make_ctx, node_by_steps, run, slips_first,
                                step_requests)
from treepref.problems import Problem
from treepref.search.mcts import MCTSConfig, mcts, puct_scores, select_child
from treepref.tree import STEP, Tree

GOLDEN = Path(__file__).parent / "golden"


def bandit() -> tuple[Tree, list[int]]:
    """A root with three children: priors .5/.3/.2, visits 4/2/0, value sums 2.0/1.6/0, root visits 10."""
    tree = Tree("t", "q")
    kids = [tree.add(0, t, prior=p) for t, p in (("a", .5), ("b", .3), ("c", .2))]
    tree.visits[0] = 10
    for c, n, w in zip(kids, (4, 2, 0), (2.0, 1.6, 0.0)):
        tree.visits[c], tree.value_sum[c] = n, w
    return tree, kids


def test_puct_scores_match_the_formula_by_hand():
    tree, (a, b, c) = bandit()
    s10 = math.sqrt(10)
    # Q + c_puct * P * sqrt(N(s)) / (1 + N(s,a)), c_puct = 1.5, unvisited Q = fpu = 0.1
    expected = [2.0 / 4 + 1.5 * .5 * s10 / 5, 1.6 / 2 + 1.5 * .3 * s10 / 3, 0.1 + 1.5 * .2 * s10 / 1]
    assert puct_scores(tree, 0, [a, b, c], 1.5, 0.1) == pytest.approx(expected)
    assert [round(x, 4) for x in expected] == [0.9743, 1.2743, 1.0487]
    assert select_child(tree, 0, [a, b, c], 1.5, 0.1) == b
    # a more optimistic first-play urgency makes the unvisited child win: 0.5 + 0.9487 > 1.2743
    assert select_child(tree, 0, [a, b, c], 1.5, 0.5) == c
    # no exploration: plain Q, unvisited at fpu 0
    assert select_child(tree, 0, [a, b, c], 0.0, 0.0) == b


def test_virtual_loss_counts_as_pessimistic_visits():
    tree, (a, b, c) = bandit()
    # one simulation in flight through b: N(b) = 3, W(b) = 1.6 + 1 * 0.0 -> Q = 0.533, U = 0.45*sqrt(10)/4
    scores = puct_scores(tree, 0, [a, b, c], 1.5, 0.1, Counter({b: 1}), 1, 0.0)
    assert scores[1] == pytest.approx(1.6 / 3 + 1.5 * .3 * math.sqrt(10) / 4)
    assert select_child(tree, 0, [a, b, c], 1.5, 0.1, Counter({b: 1}), 1, 0.0) == c
    # the tree's own columns are untouched by a virtual visit
    assert tree.visits[b] == 2 and tree.value_sum[b] == 1.6


def test_ties_go_to_the_earliest_child():
    tree = Tree("t", "q")
    kids = [tree.add(0, t, prior=1 / 3) for t in "xyz"]
    assert select_child(tree, 0, kids, 1.0, 0.0) == kids[0]


# A: prior e^-1 / (e^-1 + e^-2) = 0.731 (one token, log-prob -1), B: 0.269.
TINY = {
    (): [("A", -1.0), ("B", -2.0)],
    ("A",): ["The answer is 2."],
    ("B",): ["The answer is 3."],
}


def test_backups_match_a_hand_run():
    """Simulation by simulation (c_puct 1, fpu 0, one completion per valuation, no widening, 8 free visits).
    N(s) in PUCT counts the selecting simulation's own virtual visit, so it is the parent's visits + 1.
    1. root: expanded into A, B; its completion "A / The answer is 2." merges into A (samples 2) and adds
       the final A2 (reward 1); the outcome is backed up from A2: A2, A, root 1/1.
       Priors: A = 2e^-1 / (2e^-1 + e^-2) = .8446, B = .1554.
    2. root: A (Q 1 + .8446 * sqrt2 / 2) beats B (.1554 * sqrt2); A is expanded (both samples merge
       into A2) and its completion ends in A2 again: A2, A, root 2/2.
    3. A2 is final: a visit backs up its reward, generates nothing and is not a simulation. PUCT keeps
       choosing A (B would need .1554 * sqrt(N) > 1 + .8446 * sqrt(N) / (1 + N(A)), first at N = 52), so
       8 free visits follow: A2, A, root 10/10, and Q(A) stays 1.
    4. after 8 free visits the walk skips final nodes: at A nothing else is left, so A is spent; the next
       walk takes B: expanded, its completion "The answer is 3." = 0: B3, B 1/0, root 11/10.
    """
    ctx = make_ctx(TINY)
    cfg = MCTSConfig(simulations=3, k=2, c_puct=1.0, fpu=0.0, n_rollouts=1, widen=0, free_visits=8)
    tree = run(mcts(PROBLEM, ctx, cfg))
    a, b = node_by_steps(tree, ["A"]), node_by_steps(tree, ["B"])
    a2, b3 = node_by_steps(tree, ["A", "The answer is 2."]), node_by_steps(tree, ["B", "The answer is 3."])
    pa = 2 * math.exp(-1) / (2 * math.exp(-1) + math.exp(-2))
    assert tree.prior[a] == pytest.approx(pa) and tree.samples[a] == 2
    assert next(n for n in range(2, 100) if (1 - pa) * math.sqrt(n) > 1 + pa * math.sqrt(n) / n) == 52
    got = {n: (tree.visits[n], tree.value_sum[n]) for n in (0, a, b, a2, b3)}
    assert got == {0: (11, 10.0), a: (10, 10.0), b: (1, 0.0), a2: (10, 10.0), b3: (1, 0.0)}
    assert tree.value(a) == 1.0  # the right path's Q does not decay with its visits
    assert tree.meta["stats"] == {"simulations": 3, "final_visits": 8, "backups": 11, "expansions": 3,
                                  "rewidened": 0, "exhausted": False}
    assert step_requests(ctx.policy) == [(), ("A",), ("B",)]  # the final steps were never expanded
    check_visits(tree)


# A right step R whose children are the answer and two dead ends that never answer.
DECAY = {(): ["R"], ("R",): ["The answer is 2.", "junk one", "junk two"],
         ("R", "junk one"): ["more junk"], ("R", "junk two"): ["more junk"]}


def test_a_right_path_keeps_its_value_where_the_old_rule_decays_it():
    """With ``revisit_finals=False`` (the older rule) R's answer is valued once and then skipped, so every
    later simulation under R is a dead end and Q(R) falls toward 1/N(R); revisited, it stays near 1."""
    cfg = dict(simulations=12, k=3, n_rollouts=0, default_value=0.0, c_puct=1.0, widen=0)
    new = run(mcts(PROBLEM, make_ctx(DECAY, max_depth=3), MCTSConfig(**cfg)))
    old = run(mcts(PROBLEM, make_ctx(DECAY, max_depth=3), MCTSConfig(**cfg, revisit_finals=False)))
    r_new, r_old = node_by_steps(new, ["R"]), node_by_steps(old, ["R"])
    assert old.value(r_old) <= 0.25 and new.value(r_new) >= 0.8
    check_visits(new)
    check_visits(old)


def test_budget_counts_simulations():
    tree = run(mcts(PROBLEM, make_ctx(TINY), MCTSConfig(simulations=2, k=2, n_rollouts=1)))
    assert tree.meta["stats"]["simulations"] == 2 and tree.meta["stats"]["exhausted"] is False
    assert tree.visits[0] == 2 + tree.meta["stats"]["final_visits"]  # one completion each, plus free visits


def test_a_token_budget_stops_the_search():
    cfg = dict(simulations=5, k=3, n_rollouts=0)
    free = run(mcts(PROBLEM, make_ctx(chain, max_depth=6), MCTSConfig(**cfg)))
    assert free.meta["stats"]["simulations"] == 5 and free.meta["generated_tokens"] == 15  # 3 one-token steps each
    tree = run(mcts(PROBLEM, make_ctx(chain, max_depth=6), MCTSConfig(**cfg, token_budget=7)))
    assert tree.meta["stats"]["simulations"] == 3 and tree.meta["generated_tokens"] == 9  # stops once at 7 or more


def test_completions_become_merged_steps_of_the_tree():
    """A completion is cut into steps that merge with existing nodes, so its outcome counts in every node
    it passed through, and later simulations walk on what it wrote."""
    ctx = make_ctx(TINY)
    tree = run(mcts(PROBLEM, ctx, MCTSConfig(simulations=1, k=2, n_rollouts=2, widen=0)))
    a, b = node_by_steps(tree, ["A"]), node_by_steps(tree, ["B"])
    a2, b3 = node_by_steps(tree, ["A", "The answer is 2."]), node_by_steps(tree, ["B", "The answer is 3."])
    # completion 0 goes through A (merged: A sampled twice), completion 1 through B
    assert (tree.samples[a], tree.samples[b]) == (2, 2)
    assert {n: (tree.visits[n], tree.value_sum[n]) for n in (0, a, a2, b, b3)} == {
        0: (2, 1.0), a: (1, 1.0), a2: (1, 1.0), b: (1, 0.0), b3: (1, 0.0)}
    assert (tree.mc_total[0], tree.mc_correct[0]) == (2, 1)
    assert all(tree.kind[n] == STEP for n in range(len(tree)))
    assert tree.prompt_ids(a2) == tree.prompt_ids(a) + tree.token_ids[a2]


def test_expansion_by_completions_makes_their_first_steps_the_children():
    ctx = make_ctx(TINY)
    tree = run(mcts(PROBLEM, ctx, MCTSConfig(simulations=1, n_rollouts=2, expansion="completions")))
    assert step_requests(ctx.policy) == []  # no step request: only whole completions
    a, b = node_by_steps(tree, ["A"]), node_by_steps(tree, ["B"])
    # completion i takes candidate i first: A then "answer 2" (1), B then "answer 3" (0); both children valued
    assert {n: (tree.visits[n], tree.value_sum[n]) for n in (0, a, b)} == {0: (2, 1.0), a: (1, 1.0), b: (1, 0.0)}
    assert tree.meta["stats"]["expansions"] == 1
    with pytest.raises(ValueError, match="expansion"):
        MCTSConfig(expansion="beams")


def test_an_expansion_whose_samples_all_merged_is_widened():
    asked = []

    def same_then_other(steps):  # the first request's three samples are all "same"
        asked.append(steps)
        return ["same"] if len(asked) <= 3 else ["same", "other"]

    ctx = make_ctx(same_then_other)
    tree = run(mcts(PROBLEM, ctx, MCTSConfig(simulations=1, k=3, n_rollouts=0, widen=1)))
    assert [tree.text[c] for c in tree.children(0)] == ["same", "other"]
    assert step_requests(ctx.policy) == [(), ()]  # the second request is the widening


def test_zero_rollouts_use_the_default_value():
    ctx = make_ctx(TINY)
    tree = run(mcts(PROBLEM, ctx, MCTSConfig(simulations=2, k=2, n_rollouts=0, default_value=0.25)))
    assert tree.value_sum[0] == 0.5 and tree.visits[0] == 2
    assert all(params.stop for _, params in ctx.policy.calls)  # no rollout request was made


def chain(steps):
    """A policy that never answers: every state continues with one of three fresh steps."""
    return [f"s{len(steps)}a", f"s{len(steps)}b", f"s{len(steps)}c"]


def test_truncation_at_max_depth_and_no_expansion_of_final_nodes():
    ctx = make_ctx(chain, max_depth=2)
    tree = run(mcts(PROBLEM, ctx, MCTSConfig(simulations=100, k=3, n_rollouts=0, free_visits=8)))
    steps = tree.nodes(STEP)
    assert max(tree.depth[i] for i in steps) == 2
    assert all(tree.truncated[i] for i in steps if tree.depth[i] == 2)
    assert all(len(s) < 2 for s in step_requests(ctx.policy))
    # 1 root + 3 depth-1 expansions generate; 8 free visits of the truncated leaves, then walks that skip
    # final nodes find nothing to generate and spend the tree
    assert tree.meta["stats"] == {"simulations": 4, "final_visits": 8, "backups": 12, "expansions": 4,
                                  "rewidened": 0, "exhausted": True}
    check_visits(tree)
    # the older rule values each final node once and stops when the tree is spent: 1 + 3 + 9 simulations
    old = run(mcts(PROBLEM, make_ctx(chain, max_depth=2), MCTSConfig(simulations=100, k=3, n_rollouts=0,
                                                                      revisit_finals=False)))
    assert old.meta["stats"] == {"simulations": 13, "final_visits": 0, "backups": 13, "expansions": 4,
                                 "rewidened": 0, "exhausted": True}


def test_identical_sibling_steps_are_merged():
    ctx = make_ctx({(): [("X", -1.0), ("X", -1.0), ("Y", -1.0)], ("X",): ["The answer is 2."]})
    tree = run(mcts(PROBLEM, ctx, MCTSConfig(simulations=1, k=3, n_rollouts=0)))
    kids = tree.children(0)
    assert [tree.text[c] for c in kids] == ["X", "Y"]
    assert [tree.samples[c] for c in kids] == [2, 1]
    assert [tree.prior[c] for c in kids] == pytest.approx([2 / 3, 1 / 3])


WIDE = {
    (): [("A", -1.0), ("B", -1.5), ("C", -3.0)],
    ("A",): ["A1", "The answer is 2."],
    ("B",): ["The answer is 4.", "B1"],
    ("C",): ["The answer is 2."],
    ("A", "A1"): ["The answer is 2."],
    ("B", "B1"): ["The answer is 2.", "The answer is 5."],
}


def test_parallel_simulations_spread_by_virtual_loss():
    ctx = make_ctx(WIDE, slow=True)
    # no completions: a completion from the root would give A a value, and both simulations would want A
    cfg = MCTSConfig(simulations=10, k=3, c_puct=1.0, n_rollouts=0, parallel_simulations=2, widen=0)
    tree = run(mcts(PROBLEM, ctx, cfg))
    expansions = [{s for s, is_step in snap if is_step} for snap in ctx.policy.snapshots]
    # A (best prior) and B were being expanded at the same time by the two simulations
    assert any({("A",), ("B",)} <= e for e in expansions)
    # a node is expanded once, even when a second simulation reaches it mid-expansion
    requested = step_requests(ctx.policy.inner)
    assert len(requested) == len(set(requested))
    # virtual loss is gone: visits are exactly the backups (this tree is spent before 10 simulations)
    assert tree.visits[0] == tree.meta["stats"]["backups"] and tree.meta["stats"]["exhausted"]
    check_visits(tree)


def test_without_virtual_loss_the_second_simulation_waits_for_the_same_expansion():
    ctx = make_ctx(WIDE, slow=True)
    cfg = MCTSConfig(simulations=8, k=3, n_rollouts=1, parallel_simulations=2, virtual_loss=0, widen=0)
    tree = run(mcts(PROBLEM, ctx, cfg))
    requested = step_requests(ctx.policy.inner)
    assert len(requested) == len(set(requested))
    assert tree.visits[0] == tree.meta["stats"]["backups"]
    check_visits(tree)


def test_many_problems_share_one_policy_without_interference():
    problems = [Problem(f"p{i}", "What is 1 + 1?", answer=str(2 + i % 3)) for i in range(8)]
    cfg = MCTSConfig(simulations=6, k=2, n_rollouts=2)

    async def together():
        ctx = make_ctx(WIDE, slow=True)
        return await asyncio.gather(*(mcts(p, ctx, cfg) for p in problems))

    alone = [run(mcts(p, make_ctx(WIDE), cfg)).to_dict() for p in problems]
    assert [t.to_dict() for t in run(together())] == alone
    assert alone[0] != alone[1]  # different answers give different rewards


def test_parallel_many_problems_keep_their_invariants():
    problems = [Problem(f"p{i}", "What is 1 + 1?", answer="2") for i in range(6)]

    async def together():
        ctx = make_ctx(WIDE, slow=True)
        cfg = MCTSConfig(simulations=9, k=2, parallel_simulations=3)
        return await asyncio.gather(*(mcts(p, ctx, cfg) for p in problems))

    for tree in run(together()):
        assert tree.visits[0] == tree.meta["stats"]["backups"]
        check_visits(tree)


@pytest.mark.parametrize("bad", [dict(simulations=0), dict(k=0), dict(c_puct=-1), dict(n_rollouts=-1),
                                 dict(parallel_simulations=0), dict(virtual_loss=-1), dict(prior_temperature=0)])
def test_config_validation_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        MCTSConfig(**bad)


def test_golden_tree():
    ctx = make_ctx(WIDE)
    cfg = MCTSConfig(simulations=10, k=2, c_puct=1.25, fpu=0.0, n_rollouts=2)
    check_golden(run(mcts(PROBLEM, ctx, cfg)), GOLDEN / "mcts_scripted.json")


# "1 + 1 = 3" is a slip the script recovers from by copying the right answer: only a step check sees it
SLIP = {(): ["1 + 1 = 2", "1 + 1 = 3"], ("1 + 1 = 2",): ["The answer is 2."], ("1 + 1 = 3",): ["The answer is 2."]}


def test_a_step_check_turns_a_lucky_slip_into_a_failed_leaf_and_a_pair():
    from treepref.extract import export

    cfg = MCTSConfig(simulations=6, k=2, n_rollouts=2, widen=0)  # the root's two completions take both steps
    plain_ctx = make_ctx(SLIP, max_depth=3)
    plain = run(mcts(PROBLEM, plain_ctx, cfg))
    right, slip = node_by_steps(plain, ["1 + 1 = 2"]), node_by_steps(plain, ["1 + 1 = 3"])
    assert plain.value(slip) == plain.value(right) == 1.0  # the outcome alone cannot tell them apart
    rows, _ = export([plain], "step_pairs", rule="max_min", prefix=None, min_visits=None)
    assert len(rows) == 0

    checked = run(mcts(PROBLEM, make_ctx(SLIP, max_depth=3, step_check="arithmetic"), cfg))
    right, slip = node_by_steps(checked, ["1 + 1 = 2"]), node_by_steps(checked, ["1 + 1 = 3"])
    assert checked.terminated[slip] and checked.reward[slip] == 0.0 and checked.children(slip) == []
    assert checked.info[slip]["step_check"] is False
    assert checked.value(slip) == 0.0 and checked.value(right) == 1.0
    rows, _ = export([checked], "step_pairs", rule="max_min")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("1 + 1 = 2\n\n", "1 + 1 = 3\n\n")]
    check_visits(checked)


def test_rewiden_expands_a_node_whose_children_all_ended_instead_of_giving_up():
    """Both first steps are slips the step check ends: without ``rewiden`` the tree is spent after one
    simulation with its budget unused; with it, the walk that finds nothing under the root samples the
    root again, and the right step it finds is valued and paired against a slip. A node with a successful
    child is not sampled again."""
    from treepref.extract import export

    def ctx():
        return make_ctx(slips_first(), max_depth=3, step_check="arithmetic")

    cfg = dict(simulations=6, k=2, n_rollouts=0, default_value=0.5, widen=0, free_visits=2)
    once = run(mcts(PROBLEM, ctx(), MCTSConfig(**cfg)))
    assert once.meta["stats"]["exhausted"] and once.meta["stats"]["simulations"] == 1
    assert [once.text[c] for c in once.children(0)] == ["1 + 1 = 3", "1 + 1 = 4"]

    c = ctx()
    again = run(mcts(PROBLEM, c, MCTSConfig(**cfg, rewiden=1)))
    # the root is sampled again; the right step is expanded once and not again, as its child succeeded
    assert step_requests(c.policy) == [(), (), ("1 + 1 = 2",)]
    assert again.meta["stats"]["rewidened"] == 1 and again.meta["stats"]["exhausted"]
    right = node_by_steps(again, ["1 + 1 = 2"])
    answer = node_by_steps(again, ["1 + 1 = 2", "The answer is 2."])
    assert again.reward[answer] == 1.0 and again.value(right) > 0.5
    rows, _ = export([again], "step_pairs", rule="max_min")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("1 + 1 = 2\n\n", "1 + 1 = 3\n\n")]
    check_visits(again)
    with pytest.raises(ValueError, match="rewiden"):
        MCTSConfig(rewiden=-1)


def test_rewiden_ends_when_every_child_is_spent():
    """A node whose children are all spent (not final) is reached, sampled again up to ``rewiden`` times and
    then spent, and the search ends: before it was marked spent there, every later walk found nothing and
    started over without end (the bench hung on three-operation problems)."""
    # two non-final children whose own samples are always empty: each is spent at its expansion
    script = {(): ["A", "B"], ("A",): [""], ("B",): [""]}
    tree = run(asyncio.wait_for(mcts(PROBLEM, make_ctx(script, max_depth=4),
                                     MCTSConfig(simulations=50, k=2, n_rollouts=0, widen=0, rewiden=2)), 10))
    assert tree.meta["stats"]["exhausted"]
    assert tree.meta["stats"]["rewidened"] == 2  # the root, twice; A and B were spent at their expansion
