"""Pieces every search shares: expanding a node into sampled child steps, and Monte Carlo rollouts.

A search is an ``async`` function ``(problem, ctx, cfg) -> Tree``. Everything a search needs from the outside
world travels in ``SearchContext``, so the algorithms never import a backend or a domain; ``cfg`` is the
search's own config dataclass.

Every generation made through these helpers is counted in ``tree.meta["generated_tokens"]`` and
``tree.meta["policy_requests"]``, so throughput and yield can be measured per tree whatever the search.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass, field

from treepref.backends.base import Completion, Policy, Sampling
from treepref.envs.base import Environment, State
from treepref.problems import Problem
from treepref.tree import ROLLOUT, ROOT, STEP, Tree


@dataclass
class SearchContext:
    """The environment, the policy and the sampling settings a search runs with."""

    env: Environment
    policy: Policy
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.8, max_tokens=96))
    rollout_max_tokens: int = 384  # budget of one Monte Carlo completion (all remaining steps)


def new_tree(problem: Problem, ctx: SearchContext, search: str, settings: dict) -> tuple[Tree, dict[int, State]]:
    """An empty tree for ``problem`` and the node -> state map the search keeps beside it."""
    tree = Tree(problem_id=problem.id, prompt=problem.prompt, answer=problem.answer,
                meta={"search": search, "settings": settings, "generated_tokens": 0, "policy_requests": 0})
    return tree, {ROOT: ctx.env.initial(problem)}


def settings_of(cfg) -> dict:
    """A search config as JSON-ready settings for ``tree.meta`` (callables become their qualified name)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if callable(v):
            v = f"{getattr(v, '__module__', '?')}:{getattr(v, '__qualname__', type(v).__name__)}"
        out[f.name] = v
    return out


def record_generation(tree: Tree, results: list[list[Completion]]) -> None:
    """Count one policy request's generated tokens in the tree's meta."""
    tree.meta["generated_tokens"] = tree.meta.get("generated_tokens", 0) + sum(
        c.n_tokens for r in results for c in r)
    tree.meta["policy_requests"] = tree.meta.get("policy_requests", 0) + 1


def step_params(ctx: SearchContext, n: int) -> Sampling:
    return ctx.sampling.with_(n=n, stop=tuple(ctx.env.stop))


async def expand(tree: Tree, states: dict[int, State], node: int, ctx: SearchContext, k: int,
                 prior_temperature: float = 1.0) -> list[int]:
    """Sample ``k`` next steps from ``node`` as one request and add them as children.

    Identical step texts are merged into one child whose ``samples`` counts them, so sibling pairs never
    compare a step with itself. Returns the ids of the new children (empty steps are dropped).
    """
    state = states[node]
    results = await ctx.policy.generate([ctx.env.render(state)], step_params(ctx, k))
    record_generation(tree, results)
    [completions] = results
    children: list[int] = []
    by_text: dict[str, int] = {}
    for c in completions:
        ended = c.finish_reason == "stop" and c.stop_reason is None
        action = c.text
        if not ctx.env.split_steps(action) and not ended:
            continue  # an empty step carries no information
        tr = await ctx.env.step(state, action, n_tokens=c.n_tokens, ended=ended)
        text = tr.state.steps[-1] if tr.state.steps else ""
        if text in by_text:
            tree.samples[by_text[text]] += 1
            continue
        truncated = tr.truncated or (c.finish_reason == "length" and not tr.terminated)
        child = tree.add(node, text, n_tokens=c.n_tokens, logprob=c.logprob, reward=tr.reward,
                         terminated=tr.terminated, truncated=truncated,
                         info={"finish_reason": c.finish_reason, **tr.info})
        states[child] = tr.state
        by_text[text] = child
        children.append(child)
    set_priors(tree, tree.children(node), prior_temperature)
    return children


def set_priors(tree: Tree, children: list[int], temperature: float = 1.0) -> None:
    """PUCT priors from the policy: softmax of length-normalised step log-probs, weighted by duplicates.

    Summed log-probs would favour short steps; the per-token mean is the usual normalisation.
    """
    if not children:
        return
    scores = [(tree.logprob[c] / max(tree.n_tokens[c], 1)) / temperature + math.log(tree.samples[c])
              for c in children]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    for c, w in zip(children, weights):
        tree.prior[c] = w / total


async def rollouts(tree: Tree, states: dict[int, State], node: int, ctx: SearchContext, n: int,
                   truncated_reward: float = 0.0) -> list[float]:
    """Complete the solution from ``node`` ``n`` times; record the outcomes in the node's MC counts.

    Each completion is kept in the tree as a chain of ``rollout`` nodes under ``node`` (so extraction and
    later search can reuse it). Returns the reward of each completion (``truncated_reward`` when it ran out
    of budget without an answer).
    """
    state = states[node]
    if tree.terminated[node] or tree.truncated[node]:
        r = tree.reward[node]
        return [truncated_reward if r is None else r] * n
    if n <= 0:
        return []
    params = ctx.sampling.with_(n=n, stop=(), max_tokens=ctx.rollout_max_tokens)
    results = await ctx.policy.generate([ctx.env.render(state)], params)
    record_generation(tree, results)
    [completions] = results
    rewards = []
    for c in completions:
        reward = await _play_out(tree, states, node, ctx, c, truncated_reward)
        rewards.append(reward)
        tree.mc_total[node] += 1
        tree.mc_correct[node] += int(reward >= 1.0)
    return rewards


async def _play_out(tree: Tree, states: dict[int, State], node: int, ctx: SearchContext, c: Completion,
                    truncated_reward: float) -> float:
    steps = ctx.env.split_steps(c.text)
    ended = c.finish_reason == "stop"
    state, parent = states[node], node
    for i, text in enumerate(steps):
        last = i == len(steps) - 1
        n_tok = ctx.policy.count_tokens(text)
        tr = await ctx.env.step(state, text, n_tokens=n_tok, ended=ended and last)
        parent = tree.add(parent, tr.state.steps[-1], n_tokens=n_tok, reward=tr.reward,
                          terminated=tr.terminated, truncated=tr.truncated or (last and not tr.terminated),
                          kind=ROLLOUT, info=dict(tr.info))
        state = tr.state
        if tr.terminated or tr.truncated:
            break
    if tree.terminated[parent] and tree.reward[parent] is not None:
        return tree.reward[parent]
    return truncated_reward


def leaf_value(tree: Tree, node: int, truncated_reward: float = 0.0) -> float | None:
    """The value a final node backs up: its reward, or ``truncated_reward`` if it ended unanswered."""
    if tree.terminated[node]:
        return tree.reward[node] if tree.reward[node] is not None else truncated_reward
    if tree.truncated[node]:
        return truncated_reward
    return None


def step_children(tree: Tree, node: int) -> list[int]:
    return tree.children(node, kind=STEP)


async def value_by_rollouts(tree: Tree, states: dict[int, State], nodes: list[int], ctx: SearchContext,
                            n: int, truncated_reward: float = 0.0) -> list[float]:
    """Value each of ``nodes`` by ``n`` rollouts at once; back every outcome up to the root.

    A final node is worth its own reward (backed up once: re-sampling it would add nothing). A node's
    value is the mean outcome; ``Tree.value`` of an ancestor is then the mean over every completion that
    passed through it. All rollout requests are issued together so the backend can batch them.
    """
    async def one(node: int) -> float:
        final = leaf_value(tree, node, truncated_reward)
        if final is not None:
            tree.backup(node, final)
            return final
        outcomes = await rollouts(tree, states, node, ctx, n, truncated_reward)
        for r in outcomes:
            tree.backup(node, r)
        return sum(outcomes) / len(outcomes) if outcomes else truncated_reward

    return list(await asyncio.gather(*(one(c) for c in nodes)))
