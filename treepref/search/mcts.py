"""Monte Carlo tree search with PUCT selection over reasoning steps, several simulations in flight per tree.

One simulation walks from the root by PUCT to a node that has not been expanded, then expands it into
``k`` sampled steps and values it by ``n_rollouts`` Monte Carlo completions at the same time (AlphaZero's
order: the node reached is the one that is valued). The completions become paths of the tree
(``search.base.rollouts``): each outcome is backed up from the node its completion ended at, so every node
a completion passed through counts it, and later simulations walk on what they wrote.

A final node (terminated or truncated) is never expanded. By default a simulation that reaches one backs
up its reward again (``revisit_finals``), the textbook rule: it keeps a right path's Q from decaying toward
1/n while later simulations try junk siblings under it. Such a visit generates nothing, so it does not
count as one of the ``simulations`` (the budget buys new text), but each raises N(s) along its path, which
is what makes PUCT try the siblings of a found solution. After ``free_visits`` of them in a row the next
walk skips final nodes, so every few visits buy new text; a node with nothing left to generate under it
(every child final or spent) is spent. ``revisit_finals=False`` is the older rule: a final node is valued
once (counted as a simulation), then it, and any node all of whose children are spent, is skipped.

Several simulations run at once (``parallel_simulations``) so one tree keeps the backend busy. They spread
out through virtual loss: every node on an in-flight path counts ``virtual_loss`` extra visits valued
``virtual_value`` during selection. Virtual loss lives in a counter beside the tree, never in its columns,
so it is undone exactly and a tree never holds a half-finished simulation. A simulation that reaches a
node another one is expanding awaits that expansion and walks on into its children.

The search stops after ``simulations`` simulations, when the tree has generated ``token_budget`` tokens,
or when the whole tree is spent; with a budget left, ``fill_budget`` then widens the steps of successful paths
until it is spent (``search.spend``).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass

from treepref.envs.base import State
from treepref.problems import Problem
from treepref.search import Search
from treepref.search.base import (SearchContext, expand, leaf_value, new_tree, over_budget, rollouts, set_priors,
                                  settings_of, succeeded)
from treepref.search.spend import spend_budget
from treepref.tree import NO_PARENT, ROOT, Tree


@dataclass
class MCTSConfig:
    """Settings of :func:`mcts`."""

    simulations: int = 32
    """Simulations to run: each backs up exactly one value (the budget)."""
    k: int = 4
    """Expansion width: steps sampled (one request, ``n=k``) when a node is expanded."""
    c_puct: float = 1.0
    """Weight of the prior-driven exploration term in PUCT."""
    fpu: float = 0.0
    """First-play urgency: the Q assumed for a child never visited."""
    n_rollouts: int = 1
    """Monte Carlo completions that value a non-final node (their mean reward); 0 uses ``default_value``."""
    default_value: float = 0.0
    """Value of a non-final node when ``n_rollouts`` is 0."""
    truncated_reward: float = 0.0
    """Value of a node or rollout that ran out of budget without an answer."""
    parallel_simulations: int = 1
    """Simulations in flight at once in one tree."""
    virtual_loss: int = 1
    """Temporary visits each in-flight simulation adds to every node on its path."""
    virtual_value: float = 0.0
    """Value of a virtual visit: pessimistic, i.e. the lowest reward the task gives."""
    prior_temperature: float = 1.0
    """Temperature of the softmax over length-normalised step log-probs that makes the priors."""
    revisit_finals: bool = True
    """A final node backs up its reward on every visit, as a free simulation (False: once, then skipped)."""
    free_visits: int = 8
    """Free visits of final nodes in a row, after which the next walk skips final nodes and generates."""
    widen: int = 1
    """Extra expansion requests when all ``k`` samples of an expansion merged into one step."""
    rewiden: int = 0
    """Times an expanded node is expanded again (another ``k`` samples; ``expansion="completions"``: another
    ``n_rollouts`` completions) when a walk finds nothing under it to go into (every child final or spent) and
    none of its children succeeded, before the node counts as spent. A node whose sampled steps all failed (a
    slip the environment's step check ended, a wrong answer) then buys new siblings instead of ending the
    search with its budget unspent; one with a successful child is not resampled (more siblings of a found
    answer were mostly prose endings). 0: the textbook rule (a node is expanded once)."""
    expansion: str = "steps"
    """"steps": a node's children are ``k`` sampled steps (one request with a stop at the delimiter), valued
    by ``n_rollouts`` completions beside them; "completions": its children are the first steps of its
    ``n_rollouts`` completions (``k`` unused), so no sampled token is off a valued path."""
    token_budget: int | None = None
    """Stop starting simulations once the tree has generated this many tokens (None: no limit)."""
    fill_budget: bool = True
    """With a ``token_budget``: once the search proper stops short of it, widen the steps of successful paths
    until it is spent (``search.spend``), drawing on the run's shared pool when there is one. Only where values
    come from rollouts (``n_rollouts`` >= 1, no other evaluator): the new steps are valued the same way."""
    checkpoint_every: int | None = None
    """Save the search every this many simulations (in the runner: ``RUN/checkpoints/``), so a run stopped
    mid-search resumes it instead of starting over (None: off, right for short searches)."""
    evaluator: dict | str | None = None
    """Where a new node's value comes from (``search.evaluators``): rollouts, a PRM, a verifier, a judge,
    self-evaluation, a step scorer or a weighted mix; None: ``n_rollouts`` completions (``default_value``
    when 0)."""
    discount: float = 1.0
    """γ of the backup: a node's value is Q = r + γ·V, with r the environment's intermediate reward for the
    step into it (agents); 1 with outcome-only rewards (reasoning) is the plain mean of outcomes."""

    def __post_init__(self) -> None:
        if self.simulations < 1:
            raise ValueError(f"MCTSConfig.simulations must be >= 1, got {self.simulations}")
        if self.k < 1:
            raise ValueError(f"MCTSConfig.k must be >= 1, got {self.k}")
        if self.c_puct < 0:
            raise ValueError(f"MCTSConfig.c_puct must be >= 0, got {self.c_puct}")
        if self.n_rollouts < 0:
            raise ValueError(f"MCTSConfig.n_rollouts must be >= 0, got {self.n_rollouts}")
        if self.parallel_simulations < 1:
            raise ValueError(f"MCTSConfig.parallel_simulations must be >= 1, got {self.parallel_simulations}")
        if self.virtual_loss < 0:
            raise ValueError(f"MCTSConfig.virtual_loss must be >= 0, got {self.virtual_loss}")
        if self.prior_temperature <= 0:
            raise ValueError(f"MCTSConfig.prior_temperature must be > 0, got {self.prior_temperature}")
        if self.free_visits < 0:
            raise ValueError(f"MCTSConfig.free_visits must be >= 0, got {self.free_visits}")
        if self.expansion not in ("steps", "completions"):
            raise ValueError(f"MCTSConfig.expansion must be 'steps' or 'completions', got {self.expansion!r}")
        if self.expansion == "completions" and self.n_rollouts < 1:
            raise ValueError("MCTSConfig.n_rollouts must be >= 1 with expansion='completions'")
        if self.widen < 0:
            raise ValueError(f"MCTSConfig.widen must be >= 0, got {self.widen}")
        if self.rewiden < 0:
            raise ValueError(f"MCTSConfig.rewiden must be >= 0, got {self.rewiden}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"MCTSConfig.token_budget must be >= 1 or None, got {self.token_budget}")
        if self.evaluator is not None:
            from treepref.search.evaluators import parse

            self.evaluator = parse(self.evaluator, "MCTSConfig.evaluator")
            if self.expansion == "completions" and self.evaluator["kind"] != "rollouts":
                raise ValueError("MCTSConfig.expansion='completions' takes its children from rollouts: use "
                                 "evaluator kind 'rollouts' (or none)")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"MCTSConfig.discount must be in (0, 1], got {self.discount}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"MCTSConfig.checkpoint_every must be >= 1 or None, got {self.checkpoint_every}")


def puct_scores(tree: Tree, node: int, children: list[int], c_puct: float, fpu: float,
                virtual: Counter | None = None, virtual_loss: int = 1, virtual_value: float = 0.0) -> list[float]:
    """``Q(s,a) + c_puct * P(s,a) * sqrt(N(s)) / (1 + N(s,a))`` for each child, counting virtual visits.

    ``N(s)`` is the parent's visit count (its own valuation plus everything backed up through it).
    """
    virtual = virtual or Counter()

    def stats(i: int) -> tuple[int, float]:
        extra = virtual[i] * virtual_loss
        return tree.visits[i] + extra, tree.value_sum[i] + extra * virtual_value

    sqrt_n = math.sqrt(stats(node)[0])
    out = []
    for c in children:
        n, w = stats(c)
        q = w / n if n else fpu
        out.append(q + c_puct * tree.prior[c] * sqrt_n / (1 + n))
    return out


def select_child(tree: Tree, node: int, children: list[int], c_puct: float, fpu: float,
                 virtual: Counter | None = None, virtual_loss: int = 1, virtual_value: float = 0.0) -> int:
    """The child with the highest PUCT score; ties go to the earliest created."""
    scores = puct_scores(tree, node, children, c_puct, fpu, virtual, virtual_loss, virtual_value)
    return children[max(range(len(children)), key=lambda i: (scores[i], -i))]


class _Search:
    """The state of one running MCTS beside its tree: expansions, in-flight work, spent subtrees."""

    def __init__(self, tree: Tree, states: dict[int, State], ctx: SearchContext, cfg: MCTSConfig):
        self.tree, self.states, self.ctx, self.cfg = tree, states, ctx, cfg
        self.expanded: set[int] = set()
        self.pending: dict[int, asyncio.Task] = {}  # node -> its expansion in flight
        self.spent: set[int] = set()
        self.rewidened: Counter = Counter()  # node -> times it was expanded again (``rewiden``)
        self.virtual: Counter = Counter()
        self.started = 0  # simulations that generate (started, and not given back)
        self.final_visits = 0
        self.streak = 0  # free visits since the last simulation that generated
        self.done = 0
        self.in_flight = 0
        self.saved_at = 0  # ``started`` when last checkpointed
        self.gate = asyncio.Event()  # closed while a checkpoint waits for the simulations in flight
        self.gate.set()

    # The counters a checkpoint carries (in flight there is nothing at a checkpoint: no pending, no virtual).
    SAVED = ("expanded", "spent", "rewidened", "started", "final_visits", "streak", "done", "saved_at")

    def saved(self) -> dict:
        return {"tree": self.tree, "states": self.states, "search": {k: getattr(self, k) for k in self.SAVED}}

    def restore(self, counters: dict) -> None:
        for k in self.SAVED:
            setattr(self, k, counters[k])

    def _going(self) -> bool:
        return (self.started < self.cfg.simulations and ROOT not in self.spent
                and not over_budget(self.tree, self.cfg.token_budget))

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.cfg.parallel_simulations)))

    async def _worker(self) -> None:
        cfg = self.cfg
        while self._going():
            await self.gate.wait()
            if not self._going():
                break
            self.started += 1
            self.in_flight += 1
            try:
                outcome = await self._simulate()
            finally:
                self.in_flight -= 1
            if outcome == "generated":
                self.streak = 0
            elif outcome != "final" or cfg.revisit_finals:
                self.started -= 1  # a free visit of a final node, or a path into a subtree spent meanwhile
                if outcome == "final":
                    self.final_visits += 1
                    self.streak += 1
            self._checkpoint()
            if outcome != "generated" and (outcome != "final" or cfg.revisit_finals):
                await asyncio.sleep(0)

    def _checkpoint(self) -> None:
        """Every ``checkpoint_every`` simulations: stop starting new ones, and save once none is in flight."""
        every, checkpoint = self.cfg.checkpoint_every, self.ctx.checkpoint
        if not every or checkpoint is None:
            return
        if self.started - self.saved_at >= every:
            self.gate.clear()
        if not self.gate.is_set() and self.in_flight == 0:  # the last one in flight saves, then opens
            self.saved_at = self.started
            checkpoint.save(self.saved())
            self.gate.set()

    async def _simulate(self) -> str:
        """One simulation: "generated" (a node was expanded and valued), "final" (a final node's reward was
        backed up) or "blocked" (the path ran into a spent subtree)."""
        tree, cfg = self.tree, self.cfg
        node, path = ROOT, [ROOT]
        self.virtual[ROOT] += 1
        while True:
            if tree.is_final(node):
                self._release(path)
                self._backup(node, leaf_value(tree, node, cfg.truncated_reward))
                if not cfg.revisit_finals:
                    self._mark_spent(node)
                return "final"
            if node in self.expanded:
                children = tree.children(node)
                set_priors(tree, children, cfg.prior_temperature)  # completions may have added or merged steps
                skip_finals = cfg.revisit_finals and self.streak >= cfg.free_visits
                choices = [c for c in children if c not in self.spent and not (skip_finals and tree.is_final(c))]
                if not choices:
                    if node in self.pending:  # being expanded again: walk on into what it adds
                        await self.pending[node]
                        continue
                    if self._may_rewiden(node):
                        self.rewidened[node] += 1
                        return await self._generate(node, path, self._regrow(node))
                    # nothing left to generate under this node: only final children (being skipped), or
                    # every child spent (with ``rewiden`` that does not mark a node spent from below)
                    if skip_finals or all(c in self.spent for c in children):
                        self._mark_spent(node)
                    self._release(path)
                    return "blocked"
                node = select_child(tree, node, choices, cfg.c_puct, cfg.fpu, self.virtual, cfg.virtual_loss,
                                    cfg.virtual_value)
                self.virtual[node] += 1
                path.append(node)
                continue
            if node in self.pending:
                await self.pending[node]
                continue
            return await self._generate(node, path, self._grow(node))

    async def _generate(self, node: int, path: list[int], work) -> str:
        """Run ``work`` (an expansion of ``node``: ``_grow`` or ``_regrow``) as the node's pending task, so
        other walks that reach it wait for it, then back up its outcomes along ``path``."""
        self.pending[node] = asyncio.ensure_future(work)
        outcomes = await self.pending[node]
        self._release(path)
        for last, value in outcomes:
            self._backup(last, value)
        set_priors(self.tree, self.tree.children(node), self.cfg.prior_temperature)
        return "generated"

    async def _grow(self, node: int) -> list[tuple[int, float]]:
        """Expand ``node`` and value it; return the completions' (last node, outcome) to back up."""
        cfg, tree = self.cfg, self.tree
        if cfg.expansion == "steps":
            _, outcomes = await asyncio.gather(expand(tree, self.states, node, self.ctx, cfg.k, cfg.prior_temperature,
                                                      cfg.widen), self._evaluate(node))
        else:  # the completions' first steps are the children: every sampled token is on a valued path
            outcomes = await self._evaluate(node)
            for _ in range(cfg.widen):
                if len(tree.children(node)) >= 2 or tree.is_final(node):
                    break
                outcomes += await self._evaluate(node)
        self.expanded.add(node)
        del self.pending[node]
        if not tree.children(node):  # nothing to walk into (every sampled step was empty): move on
            self._mark_spent(node)
        return outcomes

    def _may_rewiden(self, node: int) -> bool:
        """Whether ``node`` may be expanded again (``rewiden``): it has times left and no child succeeded."""
        return self.rewidened[node] < self.cfg.rewiden and not any(
            succeeded(self.tree, c, self.ctx.success) for c in self.tree.children(node))

    async def _regrow(self, node: int) -> list[tuple[int, float]]:
        """Expand an expanded ``node`` again (``rewiden``); return the outcomes to back up: the rewards of the
        new final children, or the completions' outcomes. New children that are not final are valued when a
        walk first reaches them, as any unexpanded node is."""
        cfg, tree = self.cfg, self.tree
        before = set(tree.children(node))
        try:
            if cfg.expansion == "completions":
                return await self._evaluate(node)
            await expand(tree, self.states, node, self.ctx, cfg.k, cfg.prior_temperature, widen=0)
            return [(c, leaf_value(tree, c, cfg.truncated_reward)) for c in tree.children(node)
                    if c not in before and tree.is_final(c)]
        finally:
            del self.pending[node]

    async def _evaluate(self, node: int) -> list[tuple[int, float]]:
        if self.cfg.evaluator is not None and not self.tree.is_final(node):
            from treepref.search.evaluators import evaluate

            [evidence] = await evaluate(self.cfg.evaluator, self.tree, self.states, [node], self.ctx,
                                        self.cfg.truncated_reward)
            return evidence
        if self.cfg.n_rollouts == 0:
            return [(node, self.cfg.default_value)]
        return await rollouts(self.tree, self.states, node, self.ctx, self.cfg.n_rollouts,
                              self.cfg.truncated_reward)

    def _backup(self, node: int, value: float) -> None:
        self.tree.backup(node, value, self.cfg.discount)
        self.done += 1

    def _release(self, path: list[int]) -> None:
        for n in path:
            self.virtual[n] -= 1
            if not self.virtual[n]:
                del self.virtual[n]

    def _mark_spent(self, node: int) -> None:
        """``node`` can generate nothing more; so can a parent whose every child is spent (or final, when
        final nodes are revisited rather than spent)."""
        self.spent.add(node)
        tree, parent, finals = self.tree, self.tree.parent[node], self.cfg.revisit_finals
        while parent != NO_PARENT and parent in self.expanded and parent not in self.spent \
                and not self._may_rewiden(parent) \
                and all(c in self.spent or (finals and tree.is_final(c)) for c in tree.children(parent)):
            self.spent.add(parent)
            parent = tree.parent[parent]


async def mcts(problem: Problem, ctx: SearchContext, cfg: MCTSConfig | None = None) -> Tree:
    """Run MCTS/PUCT on ``problem`` and return the tree (visits and value sums hold the backed-up values)."""
    cfg = cfg or MCTSConfig()
    saved = ctx.checkpoint.load() if cfg.checkpoint_every and ctx.checkpoint is not None else None
    if saved is not None and (saved["tree"].meta.get("settings") != settings_of(cfg)
                              or saved["tree"].prompt != problem.prompt):
        saved = None  # saved by another search or for another problem (a --force rerun): start over
    if saved is not None:  # a run stopped mid-search: go on from its last checkpoint
        tree, states = saved["tree"], saved["states"]
    else:
        tree, states = new_tree(problem, ctx, "mcts", settings_of(cfg))
    search = _Search(tree, states, ctx, cfg)
    if saved is not None:
        search.restore(saved["search"])
    await search.run()
    spend = None
    by_rollouts = cfg.n_rollouts > 0 and (cfg.evaluator is None or cfg.evaluator["kind"] == "rollouts")
    if cfg.fill_budget and cfg.token_budget is not None and by_rollouts:
        spend = await spend_budget(tree, states, ctx, cfg.token_budget, k=cfg.k, n_rollouts=cfg.n_rollouts,
                                   truncated_reward=cfg.truncated_reward, width=cfg.parallel_simulations,
                                   prior_temperature=cfg.prior_temperature)
    tree.meta["stats"] = {"simulations": search.started, "final_visits": search.final_visits,
                          "backups": search.done,
                          "expansions": len(search.expanded), "rewidened": sum(search.rewidened.values()),
                          "exhausted": ROOT in search.spent}
    if spend is not None:
        tree.meta["stats"]["spend"] = spend
    return tree


SEARCH = Search(mcts, MCTSConfig)  # what treepref.search registers as "mcts"
