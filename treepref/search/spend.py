"""Spend a token budget where it teaches: widen the steps on successful paths, and share what a tree leaves.

A search stops when its frontier is empty (best-first) or its root is spent (MCTS) long before a token
budget runs out: with a step check most sampled steps are slips that end their paths. What a step-level
preference needs, though, is a right prefix followed by a right and a wrong continuation, at every depth of
the solution. So once the search proper is over, ``spend_budget`` samples ``k`` more steps below the nodes of
successful paths (progressive widening by budget): each slip or wrong answer it writes is a rejected step
under a prefix that reached the answer, each new step that is not final is valued by rollouts (and, when one
of them succeeds, its path is widened in turn). The least widened node goes first and, among equals, the
deepest, so the budget reaches the depths flat sampling rarely compares. Where the environment checks steps,
only paths whose every step it verified are widened (``checked_path``): below a step of prose that happened to
reach the answer, every pair would stand on a prefix nobody checked. A tree with no successful path to
widen widens its deepest open nodes instead (every step above them passed the environment's checks), so the
completions that value their new steps look for a success where the search got furthest. A node is retired after ``patience``
rounds in a row that wrote nothing new under it (every sample merged into a sibling): the policy has nothing
more to say there.

Across problems, a ``TokenPool`` (``SearchContext.pool``, one per run) moves what trees leave unspent to trees
that still have a successful path to widen: a tree whose nodes are all retired deposits its remainder and
finishes; a tree that reached its own budget with a successful path open draws from the pool round by round.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from treepref.envs.base import State
from treepref.search.base import SearchContext, expand, leaf_value, succeeded, value_by_rollouts
from treepref.tree import NO_PARENT, Tree


class TokenPool:
    """Tokens the trees of one run left unspent, for the trees that can still use them.

    Every search registers (``open``) and unregisters (``close``, also on failure) through the runner. A tree
    that wants more ``draw``s: it waits while the pool is empty and some other open tree could still deposit,
    and gets 0 once every open tree is waiting (none will deposit), so the run always ends."""

    def __init__(self) -> None:
        self.available = 0
        self.deposited = 0
        self.granted = 0
        self.open_trees = 0
        self.waiting = 0
        self._changed = asyncio.Condition()

    def open(self) -> None:
        self.open_trees += 1

    async def close(self) -> None:
        self.open_trees -= 1
        await self._notify()

    async def deposit(self, tokens: int) -> None:
        if tokens > 0:
            self.available += tokens
            self.deposited += tokens
            await self._notify()

    async def draw(self, want: int) -> int:
        """Up to ``want`` tokens, waiting for a deposit while another open tree may still make one."""
        async with self._changed:
            self.waiting += 1
            self._changed.notify_all()
            try:
                await self._changed.wait_for(lambda: self.available > 0 or self.waiting >= self.open_trees)
            finally:
                self.waiting -= 1
            got = min(want, self.available)
            self.available -= got
            self.granted += got
            return got

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def checked_path(tree: Tree, node: int) -> bool:
    """Whether no step on the path to ``node`` escaped the environment's step check (``Tree.checked``): a step
    of prose is no prefix to widen below, since whether it is right is unknown; without a step check every
    path qualifies."""
    return all(tree.checked(n) for n in tree.path(node))


def successful_path_nodes(tree: Tree, success: float = 1.0) -> set[int]:
    """The nodes above a successful final node (the root included), not the final nodes themselves."""
    out: set[int] = set()
    for n in range(len(tree)):
        if succeeded(tree, n, success):
            p = tree.parent[n]
            while p != NO_PARENT and p not in out:
                out.add(p)
                p = tree.parent[p]
    return out


async def spend_budget(tree: Tree, states: dict[int, State], ctx: SearchContext, budget: int, *, k: int,
                       n_rollouts: int, truncated_reward: float = 0.0, width: int = 1,
                       prior_temperature: float = 1.0, patience: int = 2) -> dict:
    """Widen the nodes of successful paths until the tree has generated ``budget`` tokens, then as long as the
    run's pool gives more (``ctx.pool``); deposit what is left unspent. Returns the counts for
    ``tree.meta["stats"]["spend"]``."""
    widened: Counter = Counter()
    fruitless: Counter = Counter()  # rounds in a row that wrote nothing new below a node
    retired: set[int] = set()
    limit, drawn, rounds = budget, 0, 0

    def spent() -> int:
        return tree.meta.get("generated_tokens", 0)

    def candidates() -> tuple[list[int], bool]:
        """The nodes to widen next, and whether they lie on successful paths. Without one open there, the
        deepest nodes that are not final (every step above them passed the environment's checks) are
        widened instead: their new steps' completions look for a success where the search got furthest."""
        mining = [n for n in successful_path_nodes(tree, ctx.success) if open_(n)]
        if mining:
            return sorted(mining, key=lambda n: (widened[n], -tree.depth[n], n)), True
        probing = [n for n in states if open_(n) and not tree.is_final(n)]
        return sorted(probing, key=lambda n: (widened[n], -tree.depth[n], n)), False

    def open_(n: int) -> bool:
        return n in states and n not in retired and checked_path(tree, n)

    async def widen(node: int) -> None:
        before = {c: tree.samples[c] for c in tree.children(node, kind=None)}
        children = await expand(tree, states, node, ctx, k, prior_temperature, widen=0)
        widened[node] += 1
        new = [c for c in children if c not in before]
        fruitless[node] = 0 if new else fruitless[node] + 1
        if fruitless[node] >= patience:
            retired.add(node)  # round after round every sample merged into a sibling: nothing new here
        # Every sample backs up an outcome, so a node's value stays the mean over what the policy writes
        # from it (counting only the new steps, mostly slips, would drag down exactly the nodes widened):
        # a sample that merged into a sibling backs up that sibling's value again (its reward if final), a
        # new final step its reward, a new step that is not final the completions that value it.
        for c, count in before.items():
            again = leaf_value(tree, c, truncated_reward) if tree.is_final(c) else tree.value(c)
            for _ in range(tree.samples[c] - count if again is not None else 0):
                tree.backup(c, again)
        for c in new:
            if tree.is_final(c):
                for _ in range(tree.samples[c] - 1):  # the first is backed up below
                    tree.backup(c, leaf_value(tree, c, truncated_reward))
        await value_by_rollouts(tree, states, new, ctx, n_rollouts, truncated_reward)

    while True:
        nodes, mining = candidates()
        if not nodes:
            break
        if spent() >= limit:
            if ctx.pool is None or not mining:  # only a tree with a successful path to widen draws more
                break
            grant = await ctx.pool.draw(max(1, budget // 4))
            if not grant:
                break
            limit += grant
            drawn += grant
            continue
        await asyncio.gather(*(widen(n) for n in nodes[:width]))
        rounds += 1
    left = max(0, limit - spent())
    if ctx.pool is not None:
        await ctx.pool.deposit(left)
    return {"rounds": rounds, "widened": len(widened), "retired": len(retired), "drawn": drawn,
            "deposited": left if ctx.pool is not None else 0}
