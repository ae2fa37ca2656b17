"""Flat best-of-N sampling, the baseline every tree search is measured against.

``n`` whole solutions are sampled from the root in one request (no step stop), again until ``token_budget``
is spent when one is set. Each is cut into steps in token space and stored as a chain of ``step`` nodes
ending in its outcome: they are the searches' Monte Carlo completions (``rollouts``) from the root, so the
root's ``mc_correct``/``mc_total`` count them. Chains share the nodes of identical leading steps (a trie;
``samples`` counts the solutions through a node), so pairs are taken where solutions diverge, by the same
rules as any tree. Each solution's outcome is backed up from its last node, so ``Tree.value`` of a node is
the mean outcome of the solutions through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from treepref.problems import Problem
from treepref.search.base import SearchContext, new_tree, over_budget, rollouts, settings_of, succeeded
from treepref.tree import ROOT, Tree


@dataclass
class SampleConfig:
    """Settings of :func:`sample`."""

    n: int = 8
    """Whole solutions sampled from the root per request."""
    truncated_reward: float = 0.0
    """Outcome of a solution that ran out of budget without an answer."""
    token_budget: int | None = None
    """Keep sampling ``n`` more solutions until the tree has generated this many tokens (None: one request),
    so flat sampling can be compared with a search at an equal budget."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SampleConfig.n must be >= 1, got {self.n}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"SampleConfig.token_budget must be >= 1 or None, got {self.token_budget}")


async def sample(problem: Problem, ctx: SearchContext, cfg: SampleConfig | None = None) -> Tree:
    """Sample solutions for ``problem`` and return them as a trie of step chains."""
    cfg = cfg or SampleConfig()
    tree, states = new_tree(problem, ctx, "sample", settings_of(cfg))
    leaves = []
    while True:  # n completions from the root, exactly the Monte Carlo completions of a search
        for leaf, value in await rollouts(tree, states, ROOT, ctx, cfg.n, cfg.truncated_reward):
            if leaf != ROOT:  # an empty completion adds nothing
                tree.backup(leaf, value)
                leaves.append(leaf)
        if cfg.token_budget is None or over_budget(tree, cfg.token_budget):
            break
    tree.meta["stats"] = {"solutions": len(leaves), "correct": sum(1 for leaf in leaves if succeeded(tree, leaf, ctx.success))}
    return tree
