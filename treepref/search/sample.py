"""Flat best-of-N sampling, the baseline every tree search is measured against.

``n`` whole solutions are sampled from the root in one request (no step stop). Each is cut into steps with
the environment's delimiter and stored as a chain of ``step`` nodes ending in its outcome. Chains share the
nodes of identical leading steps (a trie; ``samples`` counts the solutions through a node), so pairs can
still be taken where solutions diverge. Each solution's outcome is backed up from its last node, so
``Tree.value`` of a node is the mean outcome of the solutions through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from treepref.backends.base import Completion
from treepref.envs.base import State
from treepref.problems import Problem
from treepref.search.base import SearchContext, leaf_value, new_tree, record_generation, settings_of
from treepref.tree import ROOT, Tree


@dataclass
class SampleConfig:
    """Settings of :func:`sample`."""

    n: int = 8
    """Whole solutions sampled from the root, in one request."""
    truncated_reward: float = 0.0
    """Outcome of a solution that ran out of budget without an answer."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SampleConfig.n must be >= 1, got {self.n}")


async def sample(problem: Problem, ctx: SearchContext, cfg: SampleConfig | None = None) -> Tree:
    """Sample ``cfg.n`` solutions for ``problem`` and return them as a tree of step chains."""
    cfg = cfg or SampleConfig()
    tree, states = new_tree(problem, ctx, "sample", settings_of(cfg))
    params = ctx.sampling.with_(n=cfg.n, stop=(), max_tokens=ctx.rollout_max_tokens)
    results = await ctx.policy.generate([ctx.env.render(states[ROOT])], params)
    record_generation(tree, results)
    leaves = []
    for c in results[0]:
        leaf = await _add_chain(tree, states, ctx, c)
        if leaf != ROOT:
            tree.backup(leaf, leaf_value(tree, leaf, cfg.truncated_reward))
            leaves.append(leaf)
    tree.meta["stats"] = {"solutions": len(leaves), "correct": sum(
        1 for leaf in leaves if tree.terminated[leaf] and (tree.reward[leaf] or 0.0) >= 1.0)}
    return tree


async def _add_chain(tree: Tree, states: dict[int, State], ctx: SearchContext, c: Completion) -> int:
    """Walk ``c``'s steps down from the root, reusing an identical child where there is one; return the last."""
    steps = ctx.env.split_steps(c.text)
    ended = c.finish_reason == "stop"
    node = ROOT
    for i, text in enumerate(steps):
        last = i == len(steps) - 1
        n_tok = ctx.policy.count_tokens(text)
        tr = await ctx.env.step(states[node], text, n_tokens=n_tok, ended=ended and last)
        truncated = tr.truncated or (last and not tr.terminated)
        step_text = tr.state.steps[-1]
        same = [ch for ch in tree.children(node) if tree.text[ch] == step_text
                and tree.terminated[ch] == tr.terminated and tree.truncated[ch] == truncated]
        if same:
            node = same[0]
            tree.samples[node] += 1
        else:
            node = tree.add(node, step_text, n_tokens=n_tok, reward=tr.reward, terminated=tr.terminated,
                            truncated=truncated, info=dict(tr.info))
            states[node] = tr.state
        if tr.terminated or tr.truncated:
            break
    if node != ROOT:
        tree.info[node].setdefault("finish_reason", c.finish_reason)
    return node
