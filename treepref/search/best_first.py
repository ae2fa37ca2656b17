"""Best-first search as in Tree-PLV: always grow the step most likely to lead to the right answer.

A step's priority is the mean reward of ``n_rollouts`` sampled completions from it: with 0/1 rewards, the
fraction that reach the right answer (``Tree.mc_value``). A final step is worth its own reward and is never
expanded. The priority is kept in ``tree.scores[node]["mc"]``. The frontier is a priority queue on it (ties
go to the earlier node). Each round pops the best ``parallel_expansions`` frontier nodes, expands each into
``k`` steps and values every new step by rollouts, all at once, then pushes the non-final new steps (and,
with ``rewiden``, a node whose children all failed, to be sampled again). Among equal priorities the deeper
node goes first: before any completion has succeeded every value is 0, and a step that passed the
environment's checks deep in the solution is where a completion is likeliest to reach the answer.

Values for exporters: every rollout outcome (and a final step's reward, once) is backed up from the step it
was sampled from to the root, so ``Tree.value`` of a step is the mean outcome over every completion that
passed through it: its own rollouts plus its descendants'. For a step that was never expanded that is
exactly its rollout fraction; ``mc_correct``/``mc_total`` keep the step's own counts.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from dataclasses import dataclass

from treepref.problems import Problem
from treepref.search import Search
from treepref.search.base import (SearchContext, expand, new_tree, over_budget, settings_of, succeeded,
                                  value_by_rollouts)
from treepref.search.spend import spend_budget
from treepref.tree import ROOT, Tree


@dataclass
class BestFirstConfig:
    """Settings of :func:`best_first`."""

    k: int = 4
    """Steps sampled (one request, ``n=k``) when a frontier node is expanded."""
    n_rollouts: int = 8
    """Completions sampled from each new step to value it (the fraction that reaches the answer)."""
    max_expansions: int = 16
    """Budget: frontier nodes to expand in all."""
    stop_at_correct: bool = True
    """Stop once a step ends the solution with the right answer (reward >= 1)."""
    parallel_expansions: int = 1
    """Frontier nodes (the best ones) expanded at once in one round."""
    truncated_reward: float = 0.0
    """Outcome of a completion or step that ran out of budget without an answer."""
    widen: int = 1
    """Extra expansion requests when all ``k`` samples of an expansion merged into one step."""
    rewiden: int = 0
    """Times a node every child of which failed (its steps all ended unrewarded: a slip the environment's step
    check ended, a wrong answer) goes back on the frontier, at its value, to be expanded again; 0: once only."""
    token_budget: int | None = None
    """Stop expanding once the tree has generated this many tokens (None: no limit)."""
    fill_budget: bool = True
    """With a ``token_budget``: once the search proper stops short of it, widen the steps of successful paths
    until it is spent (``search.spend``), drawing on the run's shared pool when there is one."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"BestFirstConfig.k must be >= 1, got {self.k}")
        if self.n_rollouts < 1:
            raise ValueError(f"BestFirstConfig.n_rollouts must be >= 1, got {self.n_rollouts}")
        if self.max_expansions < 1:
            raise ValueError(f"BestFirstConfig.max_expansions must be >= 1, got {self.max_expansions}")
        if self.parallel_expansions < 1:
            raise ValueError(f"BestFirstConfig.parallel_expansions must be >= 1, got {self.parallel_expansions}")
        if self.rewiden < 0:
            raise ValueError(f"BestFirstConfig.rewiden must be >= 0, got {self.rewiden}")


async def best_first(problem: Problem, ctx: SearchContext, cfg: BestFirstConfig | None = None) -> Tree:
    """Run best-first search on ``problem``; ``tree.meta["expansion_order"]`` lists the nodes expanded."""
    cfg = cfg or BestFirstConfig()
    tree, states = new_tree(problem, ctx, "best_first", settings_of(cfg))
    frontier: list[tuple[float, int, int]] = [(-1.0, 0, ROOT)]  # (-priority, -depth, node): heapq pops the smallest
    order: list[int] = []
    found = False
    rewidened: Counter = Counter()

    async def grow(node: int) -> list[int]:
        children = await expand(tree, states, node, ctx, cfg.k, widen=cfg.widen)
        new = [c for c in children if "mc" not in tree.scores[c]]  # not valued yet (completions add steps too)
        values = await value_by_rollouts(tree, states, new, ctx, cfg.n_rollouts, cfg.truncated_reward)
        for c, v in zip(new, values):
            tree.scores[c]["mc"] = v
        return new

    while (frontier and len(order) < cfg.max_expansions and not (found and cfg.stop_at_correct)
           and not over_budget(tree, cfg.token_budget)):
        width = min(cfg.parallel_expansions, cfg.max_expansions - len(order), len(frontier))
        batch = [heapq.heappop(frontier)[-1] for _ in range(width)]
        order.extend(batch)
        for node, children in zip(batch, await asyncio.gather(*(grow(n) for n in batch))):
            for c in children:
                if tree.is_final(c):
                    found = found or succeeded(tree, c, ctx.success)
                else:
                    heapq.heappush(frontier, (-tree.scores[c]["mc"], -tree.depth[c], c))
            kids = tree.children(node)
            if rewidened[node] < cfg.rewiden and all(tree.is_final(c) and not succeeded(tree, c, ctx.success)
                                                     for c in kids):
                rewidened[node] += 1
                heapq.heappush(frontier, (-(tree.value(node) or 0.0), -tree.depth[node], node))

    spend = None
    if cfg.fill_budget and cfg.token_budget is not None:
        spend = await spend_budget(tree, states, ctx, cfg.token_budget, k=cfg.k, n_rollouts=cfg.n_rollouts,
                                   truncated_reward=cfg.truncated_reward, width=cfg.parallel_expansions)
    tree.meta["expansion_order"] = order
    tree.meta["stats"] = {"expansions": len(order), "found_correct": found, "frontier_left": len(frontier),
                          "rewidened": len(order) - len(set(order))}  # expansions of a node again
    if spend is not None:
        tree.meta["stats"]["spend"] = spend
    return tree


SEARCH = Search(best_first, BestFirstConfig)  # what treepref.search registers as "best_first"
