"""Step-level beam search: the top-B by value survive, expansions happen together, final steps stop."""

from __future__ import annotations

import pytest

from test_search_common import PROBLEM, make_ctx, node_by_steps, run, step_requests
from test_search_best_first import SCRIPT
from treepref.search.beam import BeamConfig, beam
from treepref.tree import STEP

SCORES = {"A": 0.2, "B": 0.9, "C": 0.5, "A1": 0.1, "B1": 0.3, "B2": 0.8, "C1": 0.7, "C2": 0.6}
WIDE = {
    (): ["A", "B", "C"],
    ("A",): ["A1"], ("B",): ["B1", "B2"], ("C",): ["C1", "C2"],
}


async def by_text(tree, node):
    return SCORES[tree.text[node]]


def test_keeps_the_top_b_by_scorer_value():
    ctx = make_ctx(WIDE)
    tree = run(beam(PROBLEM, ctx, BeamConfig(beam_width=2, k=3, max_depth=2, scorer=by_text)))
    kept = [[tree.text[n] for n in round_] for round_ in tree.meta["beams"]]
    assert kept == [["B", "C"], ["B2", "C1"]]
    # A was dropped in round 1, so it was never expanded; both survivors were expanded in round 2
    assert step_requests(ctx.policy) == [(), ("B",), ("C",)]
    assert tree.scores[node_by_steps(tree, ["C", "C2"])]["beam"] == 0.6
    assert tree.value(node_by_steps(tree, ["B"])) == pytest.approx((0.9 + 0.3 + 0.8) / 3)


def test_beams_of_a_round_are_expanded_together():
    ctx = make_ctx(WIDE, slow=True)
    run(beam(PROBLEM, ctx, BeamConfig(beam_width=2, k=3, max_depth=2, scorer=by_text)))
    in_flight = [{s for s, is_step in snap if is_step} for snap in ctx.policy.snapshots]
    assert any({("B",), ("C",)} <= e for e in in_flight)


def test_rollout_values_by_default():
    tree = run(beam(PROBLEM, make_ctx(SCRIPT), BeamConfig(beam_width=1, k=2, n_rollouts=2)))
    kept = [[tree.steps(n) for n in round_] for round_ in tree.meta["beams"]]
    # B (1.0) beats A (0.5); B1 (1.0) beats B2 (0.5); B1a's only child is final and right: no beam left
    assert kept == [[["B"]], [["B", "B1"]], [["B", "B1", "B1a"]], []]
    leaf = node_by_steps(tree, ["B", "B1", "B1a", "The answer is 2."])
    assert tree.reward[leaf] == 1.0 and tree.scores[leaf]["beam"] == 1.0
    assert tree.meta["stats"] == {"rounds": 4, "open_beams": 0}


def test_stops_at_max_depth():
    def endless(steps):
        return [f"s{len(steps)}a", f"s{len(steps)}b"]

    ctx = make_ctx(endless, max_depth=50)
    tree = run(beam(PROBLEM, ctx, BeamConfig(beam_width=2, k=2, max_depth=3, scorer=by_len)))
    assert max(tree.depth[n] for n in tree.nodes(STEP)) == 3
    assert len(tree.meta["beams"]) == 3


async def by_len(tree, node):
    return float(len(tree.text[node]))


@pytest.mark.parametrize("bad", [dict(beam_width=0), dict(k=0), dict(max_depth=0), dict(n_rollouts=0),
                                 dict(scorer=3)])
def test_config_validation_names_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BeamConfig(**bad)
