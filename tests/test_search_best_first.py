"""Best-first (Tree-PLV): expansion order by rollout fraction, stopping, parallel rounds, golden tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_search_common import PROBLEM, check_golden, make_ctx, node_by_steps, run, slips_first
from treepref.search.best_first import BestFirstConfig, best_first
from treepref.tree import STEP

GOLDEN = Path(__file__).parent / "golden"
RIGHT, WRONG = "The answer is 2.", "The answer is 9."

# With n_rollouts = 2, rollout i takes candidate i at its first step, then candidate 0 (ScriptedPolicy):
#   A:   A1 -> wrong, A2 -> right          = 0.5      B:   B1 -> B1a -> right, B2 -> right = 1.0
#   A1:  wrong, wrong                      = 0.0      B1:  B1a -> right (twice)           = 1.0
#   A2:  right, wrong                      = 0.5      B2:  right, wrong                   = 0.5
#   B1a: right (twice)                     = 1.0
SCRIPT = {
    (): ["A", "B"],
    ("A",): ["A1", "A2"], ("A", "A1"): [WRONG], ("A", "A2"): [RIGHT, WRONG],
    ("B",): ["B1", "B2"], ("B", "B1"): ["B1a"], ("B", "B1", "B1a"): [RIGHT], ("B", "B2"): [RIGHT, WRONG],
}


def order(tree):
    return [tree.steps(n) for n in tree.meta["expansion_order"]]


def test_rollout_fractions_are_recorded():
    tree = run(best_first(PROBLEM, make_ctx(SCRIPT), BestFirstConfig(k=2, n_rollouts=2, stop_at_correct=False)))
    fractions = {"/".join(tree.steps(n)): tree.mc_value(n) for n in tree.nodes(STEP) if not tree.is_final(n)}
    assert fractions == {"": None, "A": 0.5, "B": 1.0, "A/A1": 0.0, "A/A2": 0.5, "B/B1": 1.0, "B/B2": 0.5,
                         "B/B1/B1a": 1.0}
    assert all(tree.mc_total[n] == 2 for n in tree.nodes(STEP) if n and not tree.is_final(n))


def test_expansion_order_follows_the_values_and_stops_at_a_correct_step():
    tree = run(best_first(PROBLEM, make_ctx(SCRIPT), BestFirstConfig(k=2, n_rollouts=2)))
    assert order(tree) == [[], ["B"], ["B", "B1"], ["B", "B1", "B1a"]]
    assert tree.meta["stats"]["found_correct"] is True
    leaf = node_by_steps(tree, ["B", "B1", "B1a", RIGHT])
    assert tree.terminated[leaf] and tree.reward[leaf] == 1.0


def test_without_stopping_the_whole_tree_is_grown_best_first_ties_to_the_deeper_node():
    tree = run(best_first(PROBLEM, make_ctx(SCRIPT), BestFirstConfig(k=2, n_rollouts=2, stop_at_correct=False,
                                                                     max_expansions=50)))
    # after B1a: A (0.5) and B2 (0.5) tie, and B2 is deeper; then A, then A2 (0.5; A's completions wrote A1
    # and A2 into the tree), then A1 (0.0)
    assert order(tree) == [[], ["B"], ["B", "B1"], ["B", "B1", "B1a"], ["B", "B2"], ["A"], ["A", "A2"],
                           ["A", "A1"]]
    assert tree.meta["stats"]["frontier_left"] == 0
    for n in tree.nodes(STEP):  # final steps are never expanded
        if tree.is_final(n):
            assert not tree.children(n, kind=None)


def test_budget_of_expansions():
    tree = run(best_first(PROBLEM, make_ctx(SCRIPT), BestFirstConfig(k=2, n_rollouts=2, stop_at_correct=False,
                                                                     max_expansions=2)))
    assert order(tree) == [[], ["B"]]


def test_parallel_rounds_expand_the_best_nodes_together():
    ctx = make_ctx(SCRIPT, slow=True)
    cfg = BestFirstConfig(k=2, n_rollouts=2, stop_at_correct=False, parallel_expansions=2, max_expansions=50)
    tree = run(best_first(PROBLEM, ctx, cfg))
    # rounds: [root] (alone on the frontier), [B, A], [B1, A2] (A2 ties B2 and is older), [B1a, B2], [A1]
    assert order(tree) == [[], ["B"], ["A"], ["B", "B1"], ["A", "A2"], ["B", "B1", "B1a"], ["B", "B2"],
                           ["A", "A1"]]
    in_flight = [{s for s, is_step in snap if is_step} for snap in ctx.policy.snapshots]
    assert any({("A",), ("B",)} <= e for e in in_flight)


def test_values_are_backed_up_for_exporters():
    tree = run(best_first(PROBLEM, make_ctx(SCRIPT), BestFirstConfig(k=2, n_rollouts=2)))
    b, b2 = node_by_steps(tree, ["B"]), node_by_steps(tree, ["B", "B2"])
    # B2 was never expanded: its value is the mean of its own two completions (right, wrong) and of B's
    # completion that went through it (right); its Monte Carlo fraction counts only its own
    assert tree.value(b2) == pytest.approx(2 / 3) and tree.mc_value(b2) == 0.5
    # B: its own 2 rollouts (1, 1) + B1's (1, 1) + B2's (1, 0) + B1a's (1, 1) + B1a's final child (1)
    assert (tree.visits[b], tree.value_sum[b]) == (9, 8.0)
    assert tree.visits[0] == sum(tree.visits[c] for c in tree.children(0))


@pytest.mark.parametrize("bad", [dict(k=0), dict(n_rollouts=0), dict(max_expansions=0),
                                 dict(parallel_expansions=0)])
def test_config_validation_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BestFirstConfig(**bad)


def test_golden_tree():
    tree = run(best_first(PROBLEM, make_ctx(SCRIPT), BestFirstConfig(k=2, n_rollouts=2, max_expansions=5)))
    check_golden(tree, GOLDEN / "best_first_scripted.json")


def test_rewiden_samples_again_a_node_whose_steps_all_ended():
    """The root's first two steps are slips the step check ends: the frontier is empty after one expansion,
    unless ``rewiden`` puts the root back; then its second sampling finds the right step and the answer."""
    def ctx():
        return make_ctx(slips_first(), max_depth=3, step_check="arithmetic")

    cfg = dict(k=2, n_rollouts=1, max_expansions=8, widen=0)
    once = run(best_first(PROBLEM, ctx(), BestFirstConfig(**cfg)))
    assert order(once) == [[]] and once.meta["stats"]["rewidened"] == 0
    assert not once.meta["stats"]["found_correct"]
    again = run(best_first(PROBLEM, ctx(), BestFirstConfig(**cfg, rewiden=1)))
    assert order(again) == [[], [], ["1 + 1 = 2"]] and again.meta["stats"]["rewidened"] == 1
    assert again.meta["stats"]["found_correct"]
    right = node_by_steps(again, ["1 + 1 = 2"])
    assert again.scores[right]["mc"] == 1.0
    with pytest.raises(ValueError, match="rewiden"):
        BestFirstConfig(rewiden=-1)
