"""How much evaluator time hides behind generation: the interval arithmetic, hand-computed, and the share
the runner reports for a search whose evaluator runs beside generation (and for one where it cannot)."""

from __future__ import annotations

import asyncio

import pytest

from test_evaluators import SCRIPT, Critic
from test_search_common import PROBLEM, make_ctx
from treepref.runner import run_problems
from treepref.search import build_config, get_search
from treepref.timeline import Timeline, intersection, length, merged


def test_interval_arithmetic():
    assert merged([(3, 4), (0, 1), (0.5, 2)]) == [(0, 2), (3, 4)]
    assert length([(0, 1), (0.5, 2), (3, 4)]) == 3
    assert intersection([(0, 2), (3, 5)], [(1, 4)]) == pytest.approx(2.0)  # [1, 2] and [3, 4]
    t = Timeline(generation=[(0, 1)], evaluation=[(0.5, 1.5), (2, 3)])
    assert t.summary() == {"evaluator_s": 2.0, "evaluator_overlap": 0.25}
    assert Timeline().summary() == {"evaluator_s": 0.0, "evaluator_overlap": None}


class Slow:
    """A policy whose every request takes real time, so intervals are measurable."""

    def __init__(self, inner, seconds=0.03):
        self.inner, self.seconds = inner, seconds

    async def generate(self, prompts, params):
        await asyncio.sleep(self.seconds)
        return await self.inner.generate(prompts, params)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def slow_scorer(problems, steps):
    await asyncio.sleep(0.03)
    return [[0.5 for _ in path] for path in steps]


def run(search_name, options, tmp_path, policy=None):
    ctx = make_ctx(SCRIPT)
    ctx.policy = policy or Slow(ctx.policy)
    cfg = build_config(search_name, options)
    return asyncio.run(run_problems([PROBLEM], get_search(search_name), cfg, ctx, tmp_path, progress=False))


def test_an_evaluator_beside_generation_overlaps_it(tmp_path):
    # MCTS expands a node and evaluates it at once: the step request runs while the scorer runs
    summary = run("mcts", {"simulations": 3, "k": 2,
                           "evaluator": {"kind": "steps", "scorer": "test_timeline:slow_scorer"}}, tmp_path)
    assert summary.evaluator_s > 0.05 and summary.evaluator_overlap > 0.5


def test_a_judges_own_generations_are_not_overlap(tmp_path):
    # beam judges its new steps after their expansion ended: nothing of the search's runs meanwhile, and the
    # judge's verdict requests are its own work
    summary = run("beam", {"beam_width": 1, "k": 2, "max_depth": 1, "evaluator": {"kind": "judge", "k": 2}},
                  tmp_path, policy=Slow(Critic(SCRIPT)))
    assert summary.evaluator_s > 0.02 and summary.evaluator_overlap == 0.0


def test_no_evaluator_reports_none(tmp_path):
    summary = run("mcts", {"simulations": 2, "k": 2}, tmp_path)
    assert summary.evaluator_s == 0.0 and summary.evaluator_overlap is None
