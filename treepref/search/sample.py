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
from treepref.search import Search
from treepref.search.base import SearchContext, new_tree, over_budget, rollouts, settings_of, succeeded
from treepref.tree import NO_PARENT, ROOT, Tree


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
    leaves, solutions = [], []
    while True:  # n completions from the root, exactly the Monte Carlo completions of a search
        costs: list[int] = []
        for (leaf, value), tokens in zip(await rollouts(tree, states, ROOT, ctx, cfg.n, cfg.truncated_reward,
                                                        costs), costs):
            solutions.append([leaf, tokens, value])
            if leaf != ROOT:  # an empty completion adds nothing
                tree.backup(leaf, value)
                leaves.append(leaf)
        if cfg.token_budget is None or over_budget(tree, cfg.token_budget):
            break
    tree.meta["solutions"] = solutions  # [last node, generated tokens, outcome] in the order they were sampled
    tree.meta["stats"] = {"solutions": len(leaves), "correct": sum(1 for leaf in leaves if succeeded(tree, leaf, ctx.success))}
    return tree


def first_solutions(tree: Tree, tokens: int) -> Tree:
    """The trie of the first solutions of a flat-sampling ``tree`` whose generated tokens come closest to
    ``tokens``: flat sampling as if it had stopped there, to compare with a search at the spend it reached.

    Nodes keep their ids' order and columns; counts that depend on which solutions exist (``samples``,
    visits and values, the root's Monte Carlo counts) are rebuilt from the solutions kept, so pairs are taken
    from the cut trie by the same rules as from any tree."""
    solutions = tree.meta["solutions"]
    best, spent, total = 0, 0, 0
    for i, (_, cost, _) in enumerate(solutions, 1):
        total += cost
        if abs(total - tokens) < abs(spent - tokens):
            best, spent = i, total
    kept = solutions[:best]
    paths = [tree.path(leaf) if leaf != ROOT else [] for leaf, _, _ in kept]
    nodes = sorted({ROOT, *(n for path in paths for n in path)})
    new_id = {old: i for i, old in enumerate(nodes)}
    data = tree.to_dict()
    columns = {col: [values[n] for n in nodes] for col, values in data["columns"].items()}
    columns["parent"] = [new_id.get(tree.parent[n], NO_PARENT) for n in nodes]
    cut = Tree.from_dict({**data, "columns": columns})
    for col, empty in (("visits", 0), ("value_sum", 0.0), ("mc_correct", 0), ("mc_total", 0)):
        setattr(cut, col, [empty] * len(cut))
    cut.samples = [1] + [0] * (len(cut) - 1)
    for (leaf, _, value), path in zip(kept, paths):
        for n in path:
            cut.samples[new_id[n]] += 1
        cut.mc_total[ROOT] += 1
        if leaf != ROOT:
            cut.backup(new_id[leaf], value)
            cut.mc_correct[ROOT] += int(succeeded(cut, new_id[leaf]))
    cut.meta = {**tree.meta, "generated_tokens": spent, "cut_from_tokens": tree.meta.get("generated_tokens"),
                "solutions": [[new_id[leaf], cost, value] for leaf, cost, value in kept]}
    return cut


SEARCH = Search(sample, SampleConfig)  # what treepref.search registers as "sample"
