"""Flat best-of-N: N solutions in one request, stored as step chains that share identical prefixes."""

from __future__ import annotations

import pytest

from test_search_common import PROBLEM, make_ctx, node_by_steps, run
from treepref.search.sample import SampleConfig, sample
from treepref.tree import ROLLOUT, STEP

RIGHT, WRONG = "The answer is 2.", "The answer is 9."
# solution i takes root candidate i, then candidate 0: X -> X1 -> right, Y -> wrong, X again, Z (never answers)
SCRIPT = {(): ["X", "Y", "X", "Z"], ("X",): ["X1"], ("X", "X1"): [RIGHT], ("Y",): [WRONG]}


def test_n_solutions_as_chains_with_rewards():
    ctx = make_ctx(SCRIPT)
    tree = run(sample(PROBLEM, ctx, SampleConfig(n=4)))
    assert len(ctx.policy.calls) == 1 and ctx.policy.calls[0][1].n == 4 and not ctx.policy.calls[0][1].stop
    assert not tree.nodes(ROLLOUT)
    x, y, z = (node_by_steps(tree, [s]) for s in "XYZ")
    right = node_by_steps(tree, ["X", "X1", RIGHT])
    wrong = node_by_steps(tree, ["Y", WRONG])
    assert tree.reward[right] == 1.0 and tree.reward[wrong] == 0.0
    # the two identical X solutions share one chain
    assert [tree.samples[n] for n in (x, node_by_steps(tree, ["X", "X1"]), right)] == [2, 2, 2]
    assert tree.samples[y] == 1
    # Z ended without an answer: terminated by the end of sequence, reward 0
    assert tree.terminated[z] and tree.reward[z] == 0.0
    # values: one backup per solution
    assert (tree.visits[0], tree.value_sum[0]) == (4, 2.0)
    assert tree.value(x) == 1.0 and tree.value(y) == 0.0
    assert tree.meta["stats"] == {"solutions": 4, "correct": 2}
    assert tree.meta["generated_tokens"] > 0


def test_a_solution_cut_by_the_token_budget_is_truncated():
    # (the scripted policy joins a cut text with spaces, so one long step shows the cut)
    ctx = make_ctx({(): ["one two three four five six"]})
    ctx.rollout_max_tokens = 5
    tree = run(sample(PROBLEM, ctx, SampleConfig(n=1)))
    leaves = [n for n in tree.nodes(STEP) if n and tree.is_leaf(n)]
    assert [tree.steps(n) for n in leaves] == [["one two three four five"]]
    assert tree.truncated[leaves[0]] and not tree.terminated[leaves[0]]
    assert tree.info[leaves[0]]["finish_reason"] == "length"


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n must be"):
        SampleConfig(n=0)
