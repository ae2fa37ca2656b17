"""Acting with a step-level Q-value model: at each step sample ``k`` actions, score each, take the best, go on.

This is the agent of Zhai et al. 2024, "Enhancing Decision-Making for LLM Agents via Step-Level Q-Value
Models". The Q-value model is the last part of a loop: MCTS trees of an agent give Q-valued step pairs
(``configs/agent-q.yaml``), step-level DPO trains a policy on them (``configs/train-q-value.yaml``), and its
implicit reward β·(log π_θ(a|s) − log π_ref(a|s)) is the Q here (``scorer: {kind: dpo_q, model: FOLDER}``,
``search.evaluators``), while the acting policy stays the search's own (``configs/q-value.yaml``).

Every sampled action enters the tree through ``search.base.expand`` (identical samples merge, so a step may
offer fewer than ``k`` distinct actions) and keeps its score in ``tree.scores[node]["q"]``; the chosen one is
expanded next. Ties go to the action sampled first, so ``scorer: none`` (every action scores 0) is the policy
acting alone at the same ``k`` samples per step, the baseline a bench compares with. The episode's outcome
is backed up along the chosen path, so the trees export like any search's; ``tree.meta["episode"]`` says how
it ended. An action cut off mid-generation (its token budget ran out: ``info["cut_off"]``) is not acted on and
would end the episode, so it is taken only when every sample of the step was cut off. Rewards are never read to
choose: a scorer that plays actions out would see the reward of a final action (``buy now``) before the agent
commits to it, so ``rollouts`` and ``advantage`` are refused.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from dataclasses import dataclass
from typing import Awaitable, Callable

from treepref.problems import Problem
from treepref.registry import resolve
from treepref.search import Search
from treepref.search.base import SearchContext, expand, leaf_value, new_tree, settings_of, succeeded
from treepref.tree import ROOT, Tree

Scorer = Callable[[Tree, int], Awaitable[float] | float]
PLAIN_SCORERS = ("none", "logprob")
OUTCOME_KINDS = ("rollouts", "advantage")  # evaluators whose value comes from playing the episode out


@dataclass
class QGuidedConfig:
    """Settings of :func:`q_guided`."""

    k: int = 4
    """Actions sampled (one request, ``n=k``) at each step."""
    scorer: Scorer | dict | str | None = "none"
    """What ranks the sampled actions: ``none`` (the first sampled), ``logprob`` (the policy's own summed
    log-prob of the action), an evaluator spec (``{kind: dpo_q, model: FOLDER}``, a kind name, any kind with a
    score function) or an ``async``/plain function ``(tree, node) -> float`` (``"module:function"`` in YAML)."""
    max_steps: int | None = None
    """Actions taken at most (None: until the environment ends the episode, at its ``max_depth`` at latest)."""
    widen: int = 0
    """Extra requests when all ``k`` samples of a step merged into one action (0: take it)."""
    truncated_reward: float = 0.0
    """Outcome backed up when the episode stops without a terminated action."""

    def __post_init__(self) -> None:
        where = "QGuidedConfig"
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"{where}.k must be an integer >= 1, got {self.k!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"{where}.max_steps must be an integer >= 1 or null, got {self.max_steps!r}")
        if self.widen < 0:
            raise ValueError(f"{where}.widen must be >= 0, got {self.widen!r}")
        self.scorer = check_scorer(self.scorer, f"{where}.scorer")


def check_scorer(scorer, where: str = "scorer"):
    """``scorer`` as :func:`q_guided` uses it: ``"none"``, ``"logprob"``, a parsed evaluator spec or a callable.
    A bad one is a one-line ``ValueError`` naming ``where``."""
    if scorer is None:
        return "none"
    if callable(scorer):
        return scorer
    if isinstance(scorer, str) and ":" in scorer:
        return resolve(scorer, what="scorer", key=where)
    if isinstance(scorer, str) and scorer.strip().lower() in PLAIN_SCORERS:
        return scorer.strip().lower()
    if isinstance(scorer, (str, dict)):
        from treepref.search.evaluators import EVALUATORS, parse

        if isinstance(scorer, str) and scorer not in EVALUATORS:
            raise ValueError(f"{where}: {scorer!r} is neither none, logprob, an evaluator kind "
                             f"({', '.join(EVALUATORS.names())}) nor 'module:function'")
        spec = parse(scorer, where)
        kinds = [p["kind"] for p in spec.get("parts", ())] + [spec["kind"]]
        for kind in kinds:
            if kind in OUTCOME_KINDS:
                raise ValueError(f"{where}: kind {kind!r} plays the episode out and would read the reward of an "
                                 "action before taking it; use a scorer of the action itself (dpo_q, prm, ...)")
        return spec
    raise ValueError(f"{where} must be none, logprob, an evaluator spec or 'module:function', got {scorer!r}")


async def q_guided(problem: Problem, ctx: SearchContext, cfg: QGuidedConfig | None = None) -> Tree:
    """One episode on ``problem``: sample ``cfg.k`` actions, take the one the scorer ranks highest, repeat until
    a final node or ``cfg.max_steps``."""
    cfg = cfg or QGuidedConfig()
    tree, states = new_tree(problem, ctx, "q_guided", settings_of(cfg))
    node, taken, sampled, cut_off = ROOT, [], 0, 0
    while not tree.is_final(node) and (cfg.max_steps is None or len(taken) < cfg.max_steps):
        children = await expand(tree, states, node, ctx, cfg.k, widen=cfg.widen)
        if not children:  # every sample was empty: nothing to act on
            break
        values = await score(cfg.scorer, tree, states, children, ctx)
        for c, v in zip(children, values):
            tree.scores[c]["q"] = v
        sampled += len(children)
        cut = [bool(tree.info[c].get("cut_off")) for c in children]
        cut_off += sum(cut)
        node = children[best(values, cut)]
        taken.append(node)
    ended = tree.is_final(node)
    outcome = leaf_value(tree, node, cfg.truncated_reward) if ended else cfg.truncated_reward
    if node != ROOT:
        tree.backup(node, outcome)
    tree.meta["episode"] = {"actions": taken, "last": node, "ended": ended, "terminated": bool(tree.terminated[node]),
                            "reward": tree.reward[node] if tree.terminated[node] else None, "outcome": outcome,
                            "success": succeeded(tree, node, ctx.success)}
    tree.meta["stats"] = {"steps": len(taken), "distinct_actions": sampled, "cut_off": cut_off}
    return tree


def best(values: list[float], cut: list[bool] | None = None) -> int:
    """The index of the highest value, the first among equals; NaN ranks below everything, and an action that
    was ``cut`` off below every whole one."""
    cut = cut or [False] * len(values)
    return max(range(len(values)),
               key=lambda i: (not cut[i], -math.inf if math.isnan(values[i]) else values[i], -i))


async def score(scorer, tree: Tree, states: dict, nodes: list[int], ctx: SearchContext) -> list[float]:
    """Each action's score under ``scorer`` (as :func:`check_scorer` returns it)."""
    if scorer == "none":
        return [0.0 for _ in nodes]
    if scorer == "logprob":
        return [float(tree.logprob[n]) for n in nodes]
    if isinstance(scorer, dict):
        from treepref.search.evaluators import evaluate

        evidence = await evaluate(scorer, tree, states, nodes, ctx)
        return [sum(v for _, v in ev) / len(ev) if ev else math.nan for ev in evidence]

    async def one(n: int) -> float:
        value = scorer(tree, n)
        return float(await value if inspect.isawaitable(value) else value)

    return list(await asyncio.gather(*(one(n) for n in nodes)))


SEARCH = Search(q_guided, QGuidedConfig)  # what treepref.search registers as "q_guided"
