"""Monte Carlo step values: complete the solution N times from a node and count how often it is right.

This is the value source of Math-Shepherd and of OmegaPRM: a prefix is good when the policy can still
reach the reference answer from it. The completions become paths of the tree (merged with its steps) by
``treepref.search.base.rollouts``, which also adds them to the node's ``mc_correct`` / ``mc_total``, so
every label here is read back from those counts (and repeated calls accumulate, never overwrite).

Two labels come from the counts (correct c out of total n):
  hard = c > 0      (Math-Shepherd "HE": some completion reaches the answer)
  soft = c / n      (Math-Shepherd "SE": the estimated probability of reaching it)
A final node (answered, or out of budget) needs no sampling: its value is its own reward, recorded once
as a single exact count so that it reads like any other node.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from treepref.envs.base import State
from treepref.problems import Problem
from treepref.search import Search
from treepref.search.base import SearchContext, add_step, rollouts, succeeded
from treepref.tree import ROOT, STEP, Tree


@dataclass(frozen=True)
class MCValue:
    """Monte Carlo counts of one node."""

    node: int
    correct: int
    total: int

    @property
    def hard(self) -> bool | None:
        return hard_label(self.correct, self.total)

    @property
    def soft(self) -> float | None:
        return soft_label(self.correct, self.total)


def hard_label(correct: int, total: int) -> bool | None:
    """Any completion correct (None when nothing was sampled)."""
    return correct > 0 if total else None


def soft_label(correct: int, total: int) -> float | None:
    """Fraction of completions correct (None when nothing was sampled)."""
    return correct / total if total else None


def mc_of(tree: Tree, node: int) -> MCValue:
    return MCValue(node, tree.mc_correct[node], tree.mc_total[node])


async def mc_value(tree: Tree, states: dict[int, State], node: int, ctx: SearchContext, n: int, *,
                   truncated_reward: float = 0.0) -> MCValue:
    """Add ``n`` completions from ``node`` (one request with ``n`` samples) and return its counts.

    A final node is valued exactly by its reward instead (recorded once, as 1 of 1 or 0 of 1).
    """
    if tree.is_final(node):
        if tree.mc_total[node] == 0:
            tree.mc_total[node] = 1
            tree.mc_correct[node] = int(succeeded(tree, node, ctx.success))
            tree.info[node]["mc_exact"] = True
    elif n > 0:
        await rollouts(tree, states, node, ctx, n, truncated_reward)
    return mc_of(tree, node)


async def add_path(tree: Tree, states: dict[int, State], steps: list[str], ctx: SearchContext, *,
                   parent: int = ROOT, complete: bool = True) -> list[int]:
    """Insert a given solution (step texts) below ``parent`` as ``step`` nodes and return their ids.

    Steps go through ``search.base.add_step`` like generated ones, so several solutions that share a prefix
    share its nodes (and its completions); the environment decides termination and reward and encodes
    the text (it was not generated). Steps after a final one are dropped. ``complete``: the text is a
    whole solution, so its last step ended the sequence (set False for a prefix).
    """
    node, out = parent, []
    for i, text in enumerate(steps):
        if tree.is_final(node):
            break
        child = await add_step(tree, states, node, ctx, text, None, ended=complete and i == len(steps) - 1)
        if child is None:
            continue
        node = child
        out.append(node)
    return out


async def rebuild_states(tree: Tree, problem: Problem, ctx: SearchContext, nodes: list[int]) -> dict[int, State]:
    """States for ``nodes`` and their ancestors, by replaying each path through the environment with the
    token ids each step was generated with (text only for trees that have none).

    Searches return only the tree; this is what lets a finished tree be labelled afterwards.
    """
    states: dict[int, State] = {ROOT: ctx.env.initial(problem)}
    for node in nodes:
        for i in tree.path(node):
            if i not in states:
                prev = states[tree.parent[i]]
                tr = await ctx.env.step(prev, tree.text[i], token_ids=tree.token_ids[i] or None,
                                        ended=tree.terminated[i])
                states[i] = tr.state
    return states


async def label_path(tree: Tree, states: dict[int, State], path: list[int], ctx: SearchContext, n: int, *,
                     truncated_reward: float = 0.0) -> list[MCValue]:
    """Math-Shepherd: the MC value of every prefix of ``path`` (node ids, root excluded).

    All prefixes are sampled concurrently so the backend sees them as one batch.
    """
    return list(await asyncio.gather(*(mc_value(tree, states, node, ctx, n, truncated_reward=truncated_reward)
                                       for node in path)))


async def label_solution(problem: Problem, steps: list[str], ctx: SearchContext, n: int, *,
                         tree: Tree | None = None, states: dict[int, State] | None = None
                         ) -> tuple[Tree, list[int], list[MCValue]]:
    """Add ``steps`` to ``tree`` (a new one if None) and label each prefix with ``n`` completions."""
    if tree is None:
        tree = Tree(problem_id=problem.id, prompt=problem.prompt, answer=problem.answer,
                    meta={"search": "math-shepherd", "settings": {"n": n}})
    if states is None:
        states = {ROOT: ctx.env.initial(problem)}
        tree.token_ids[ROOT] = list(states[ROOT].token_ids)
    path = await add_path(tree, states, steps, ctx)
    return tree, path, await label_path(tree, states, path, ctx, n)


@dataclass
class MathShepherdConfig:
    """Settings of :func:`math_shepherd` (the ``math-shepherd`` recipe's search)."""

    solutions: int = 4
    """Whole solutions sampled from the root (flat sampling, shared prefixes merged)."""
    n: int = 8
    """Completions per step (the MC estimate's sample size)."""
    truncated_reward: float = 0.0
    """Outcome of a completion that ran out of budget without an answer."""

    def __post_init__(self) -> None:
        if self.solutions < 1 or self.n < 1:
            raise ValueError(f"MathShepherdConfig needs solutions >= 1 and n >= 1, got {self}")


async def math_shepherd(problem: Problem, ctx: SearchContext, cfg: MathShepherdConfig | None = None) -> Tree:
    """Sample solutions, then label every step node with ``n`` completions (a search-shaped entry point:
    ``async (problem, ctx, cfg) -> Tree``)."""
    from dataclasses import asdict

    from treepref.search.sample import SampleConfig, sample

    cfg = cfg or MathShepherdConfig()
    tree = await sample(problem, ctx, SampleConfig(n=cfg.solutions, truncated_reward=cfg.truncated_reward))
    nodes = [i for i in tree.nodes(STEP) if i != ROOT]
    states = await rebuild_states(tree, problem, ctx, nodes)
    await asyncio.gather(*(mc_value(tree, states, i, ctx, cfg.n, truncated_reward=cfg.truncated_reward)
                           for i in nodes))
    # the completions became steps too; these are the nodes of the sampled solutions, each labelled
    tree.meta.update(search="math_shepherd", settings=asdict(cfg), labelled=nodes)
    return tree


SEARCH = Search(math_shepherd, MathShepherdConfig)  # what treepref.search registers as "math_shepherd"
