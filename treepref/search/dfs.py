"""Depth-first search with backtracking (DFSDT, as in ToolLLM): follow one path until it fails, then go back.

Agent episodes are long and most of a path's value is only known at its end, so instead of spreading the
budget breadth-first, DFSDT commits to the most likely next step and descends; when a path ends without
success it backs up to the nearest node that can still try something else. A node is expanded into ``k``
sampled steps (one request) at a time, up to ``max_children`` children; its children are tried highest
prior first. A final child (terminated or truncated) is judged when it arrives: a success ends the search
(``stop_at_first_success``), a failure is marked ``info["pruned"]``. A node whose children all failed and
that may not get more fails too and is pruned, and the search backtracks to its parent.

Nothing is deleted: failed branches stay in the tree, marked, so exports can pair them with the path that
worked. Each final node's outcome (``leaf_value``) is backed up from it once, so ``Tree.value`` of a node is
the mean outcome of the finished paths through it. ``tree.meta["expansion_order"]`` lists the nodes
expanded, in order; ``tree.meta["stats"]`` counts nodes, successes, pruned nodes and backtracks.
"""

from __future__ import annotations

from dataclasses import dataclass

from treepref.envs.base import is_success
from treepref.problems import Problem
from treepref.search import Search
from treepref.search.base import SearchContext, expand, leaf_value, new_tree, over_budget, settings_of
from treepref.tree import ROOT, STEP, Tree


@dataclass
class DFSConfig:
    """Settings of :func:`dfs`."""

    k: int = 2
    """Steps sampled (one request, ``n=k``) each time a node is expanded."""
    max_nodes: int = 30
    """Budget: step nodes (the root not counted) the tree may hold; expansions are cut to fit it."""
    max_children: int = 2
    """Children a node may get (over repeated expansions) before it fails once they all failed."""
    stop_at_first_success: bool = True
    """End the search as soon as a final step succeeds."""
    token_budget: int | None = None
    """Stop expanding once the tree has generated this many tokens (None: no limit)."""
    truncated_reward: float = 0.0
    """Value backed up from a step that ran out of budget without finishing."""
    success: float = 1.0
    """Reward at or above which a terminated step counts as a success (unless the env says in info)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"DFSConfig.k must be >= 1, got {self.k}")
        if self.max_nodes < 1:
            raise ValueError(f"DFSConfig.max_nodes must be >= 1, got {self.max_nodes}")
        if self.max_children < 1:
            raise ValueError(f"DFSConfig.max_children must be >= 1, got {self.max_children}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"DFSConfig.token_budget must be >= 1 or None, got {self.token_budget}")


def _step_count(tree: Tree) -> int:
    return len(tree.nodes(STEP)) - 1


async def dfs(problem: Problem, ctx: SearchContext, cfg: DFSConfig | None = None) -> Tree:
    """Run DFSDT on ``problem`` and return the tree (failed branches kept, marked ``pruned``)."""
    cfg = cfg or DFSConfig()
    tree, states = new_tree(problem, ctx, "dfs", settings_of(cfg))
    order: list[int] = []
    stats = {"nodes": 0, "successes": 0, "pruned": 0, "backtracks": 0, "expansions": 0}
    judged: set[int] = set()  # final nodes already backed up and judged
    stopped = False  # a success ended the search

    def spent() -> bool:
        return stopped or _step_count(tree) >= cfg.max_nodes or over_budget(tree, cfg.token_budget)

    def prune(node: int) -> None:
        tree.info[node]["pruned"] = True
        stats["pruned"] += 1

    def judge(node: int) -> bool:
        """Back a final node's outcome up once; prune it unless it succeeded. Whether it succeeded."""
        nonlocal stopped
        judged.add(node)
        tree.backup(node, leaf_value(tree, node, cfg.truncated_reward))
        ok = tree.terminated[node] and is_success(tree.reward[node], tree.info[node], cfg.success)
        if ok:
            stats["successes"] += 1
            stopped = stopped or cfg.stop_at_first_success
        else:
            prune(node)
        return ok

    async def grow(node: int) -> bool:
        """Expand ``node`` once within the budgets; whether it got a new child."""
        before = set(tree.children(node))
        room = min(cfg.k, cfg.max_children - len(before), cfg.max_nodes - _step_count(tree))
        order.append(node)
        stats["expansions"] += 1
        children = await expand(tree, states, node, ctx, room, widen=0)
        return any(c not in before for c in children)

    async def visit(node: int) -> bool:
        """Search below a non-final ``node``; whether a success was found under it."""
        found, entered = False, set()
        while not spent():
            for c in tree.children(node):
                if tree.is_final(c) and c not in judged:
                    found = judge(c) or found
            if spent():
                break
            todo = sorted((c for c in tree.children(node) if not tree.is_final(c) and c not in entered),
                          key=lambda c: (-tree.prior[c], c))
            if todo:
                child = todo[0]
                entered.add(child)
                found = await visit(child) or found
                if tree.info[child].get("pruned"):
                    stats["backtracks"] += 1
                continue
            if len(tree.children(node)) >= cfg.max_children or not await grow(node):
                if not found and node != ROOT:
                    prune(node)
                break
        return found

    await visit(ROOT)
    stats["nodes"] = _step_count(tree)
    tree.meta["expansion_order"] = order
    tree.meta["stats"] = {**stats, "found": stats["successes"] > 0}
    return tree


SEARCH = Search(dfs, DFSConfig)  # what treepref.search registers as "dfs"
