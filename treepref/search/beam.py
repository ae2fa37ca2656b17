"""Step-level beam search: keep the ``beam_width`` best partial solutions, one step deeper each round.

Each round expands every beam into ``k`` steps at once, values every new step (its reward when final, else
the configured ``evaluator``, else the ``scorer`` hook, else the mean reward of ``n_rollouts`` completions
from it) and keeps the best
``beam_width`` non-final steps as the next beams. It stops after ``max_depth`` rounds or when no beam is left
(every new step was final).

Values for exporters: with rollouts, every outcome is backed up from the step to the root (as in
best-first); with a scorer, the step's score is backed up once. ``tree.scores[node]["beam"]`` holds the
value the ranking used.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from treepref.problems import Problem
from treepref.search import Search
from treepref.search.base import (SearchContext, expand, leaf_value, new_tree, over_budget, settings_of,
                                  value_by_rollouts)
from treepref.tree import ROOT, Tree

Scorer = Callable[[Tree, int], Awaitable[float]]


@dataclass
class BeamConfig:
    """Settings of :func:`beam`."""

    beam_width: int = 4
    """B: partial solutions kept after each round."""
    k: int = 4
    """Steps sampled (one request, ``n=k``) from each beam per round."""
    max_depth: int = 8
    """Rounds (steps) at most; the environment may end paths earlier."""
    n_rollouts: int = 4
    """Completions that value a new step when there is no ``scorer``."""
    scorer: Scorer | None = None
    """Optional ``async (tree, node) -> float`` that values a non-final step instead of rollouts (a PRM)."""
    evaluator: dict | str | None = None
    """Where a non-final step's value comes from (``search.evaluators``, as in MCTS); wins over ``scorer``
    and ``n_rollouts``."""
    truncated_reward: float = 0.0
    """Outcome of a completion or step that ran out of budget without an answer."""
    widen: int = 1
    """Extra expansion requests when all ``k`` samples of an expansion merged into one step."""
    token_budget: int | None = None
    """Stop starting rounds once the tree has generated this many tokens (None: no limit)."""

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"BeamConfig.beam_width must be >= 1, got {self.beam_width}")
        if self.k < 1:
            raise ValueError(f"BeamConfig.k must be >= 1, got {self.k}")
        if self.max_depth < 1:
            raise ValueError(f"BeamConfig.max_depth must be >= 1, got {self.max_depth}")
        if self.evaluator is not None:
            from treepref.search.evaluators import parse

            self.evaluator = parse(self.evaluator, "BeamConfig.evaluator")
        if self.scorer is None and self.evaluator is None and self.n_rollouts < 1:
            raise ValueError(f"BeamConfig.n_rollouts must be >= 1 without a scorer, got {self.n_rollouts}")
        if self.scorer is not None and not callable(self.scorer):
            raise ValueError(f"BeamConfig.scorer must be an async callable (tree, node) -> float, "
                             f"got {self.scorer!r}")


async def beam(problem: Problem, ctx: SearchContext, cfg: BeamConfig | None = None) -> Tree:
    """Run step-level beam search on ``problem``; ``tree.meta["beams"]`` lists the beams kept per round."""
    cfg = cfg or BeamConfig()
    tree, states = new_tree(problem, ctx, "beam", settings_of(cfg))
    beams, history, rounds = [ROOT], [], 0

    async def score(node: int) -> float:
        final = leaf_value(tree, node, cfg.truncated_reward)
        if final is None and cfg.evaluator is not None:
            from treepref.search.evaluators import evaluate

            [evidence] = await evaluate(cfg.evaluator, tree, states, [node], ctx, cfg.truncated_reward)
            for last, v in evidence:
                tree.backup(last, v)
            return sum(v for _, v in evidence) / len(evidence)
        if final is not None or cfg.scorer is None:
            [v] = await value_by_rollouts(tree, states, [node], ctx, cfg.n_rollouts, cfg.truncated_reward)
            return v
        v = float(await cfg.scorer(tree, node))
        tree.backup(node, v)
        return v

    while beams and rounds < cfg.max_depth and not over_budget(tree, cfg.token_budget):
        rounds += 1
        groups = await asyncio.gather(*(expand(tree, states, b, ctx, cfg.k, widen=cfg.widen) for b in beams))
        children = [c for group in groups for c in group if "beam" not in tree.scores[c]]
        values = await asyncio.gather(*(score(c) for c in children))
        for c, v in zip(children, values):
            tree.scores[c]["beam"] = v
        ranked = sorted((c for c in children if not tree.is_final(c)), key=lambda c: (-tree.scores[c]["beam"], c))
        beams = ranked[: cfg.beam_width]
        history.append(beams)

    tree.meta["beams"] = history
    tree.meta["stats"] = {"rounds": rounds, "open_beams": len(beams)}
    return tree


SEARCH = Search(beam, BeamConfig)  # what treepref.search registers as "beam"
