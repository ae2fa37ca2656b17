"""Pieces every search shares: the one way to add a step, expansion into sampled siblings, and Monte Carlo
completions that become paths of the tree.

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
from typing import TYPE_CHECKING, Sequence

from treepref.backends.base import Completion, Policy, Sampling
from treepref.envs.base import Environment, State, is_success
from treepref.problems import Problem
from treepref.search.checkpoint import Checkpoint
from treepref.timeline import Timeline
from treepref.tree import ROOT, STEP, Tree

if TYPE_CHECKING:
    from treepref.search.spend import TokenPool


@dataclass
class SearchContext:
    """The environment, the policy and the sampling settings a search runs with."""

    env: Environment
    policy: Policy
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.8, max_tokens=96))
    rollout_max_tokens: int = 384  # budget of one Monte Carlo completion (all remaining steps)
    rollout_by_step: bool = False  # completions go one step per request and stop at the first final step
    success: float = 1.0  # the reward counted as solved when the environment does not say (``is_success``)
    timeline: Timeline | None = None  # generation and evaluation intervals (the runner sets one per run)
    checkpoint: Checkpoint | None = None  # where a long search saves itself (the runner sets one per problem)
    pool: "TokenPool | None" = None  # the run's unspent tokens, shared between trees (``search.spend``)

    def __post_init__(self) -> None:
        # An environment that encodes text (its prompts) must use the policy's tokenizer, or the ids it sends
        # are another vocabulary's: one left without a tokenizer gets the policy's here.
        if getattr(self.env, "tokenizer", False) is None and hasattr(self.policy, "encode"):
            self.env = dataclasses.replace(self.env, tokenizer=self.policy)


def new_tree(problem: Problem, ctx: SearchContext, search: str, settings: dict) -> tuple[Tree, dict[int, State]]:
    """An empty tree for ``problem`` and the node -> state map the search keeps beside it. The root holds
    the prompt's token ids, so ``tree.prompt_ids(node)`` is what the policy continued at any node."""
    tree = Tree(problem_id=problem.id, prompt=problem.prompt, answer=problem.answer,
                meta={"search": search, "settings": settings, "generated_tokens": 0, "policy_requests": 0})
    root = ctx.env.initial(problem)
    tree.token_ids[ROOT] = list(root.token_ids)
    tree.rendered[ROOT] = ctx.env.render_text(root)
    if hasattr(ctx.env, "messages"):  # the chat turns the prompt was rendered from (conversational exports)
        tree.meta["messages"] = ctx.env.messages(problem)
    return tree, {ROOT: root}


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


def over_budget(tree: Tree, token_budget: int | None) -> bool:
    """Whether the tree has generated its ``token_budget`` (None: no budget)."""
    return token_budget is not None and tree.meta.get("generated_tokens", 0) >= token_budget


def step_params(ctx: SearchContext, n: int) -> Sampling:
    return ctx.sampling.with_(n=n, stop=tuple(ctx.env.stop))


def step_key(env: Environment, text: str) -> str:
    """What makes two sibling steps the same step: the environment's ``step_key`` (reasoning: the text without
    spaces, case or a closing period), else the text with its runs of whitespace made one space."""
    key = getattr(env, "step_key", None)
    return key(text) if callable(key) else " ".join(text.split())


async def add_step(tree: Tree, states: dict[int, State], parent: int, ctx: SearchContext, text: str,
                   token_ids: Sequence[int] | None, *, logprob: float = 0.0, finish_reason: str = "stop",
                   ended: bool = False) -> int | None:
    """The one way a step enters a tree: through ``env.step``, merged with a sibling of the same text.

    Expansion, Monte Carlo completions, flat sampling and given solutions all come here, so merging,
    truncation and rewards follow one rule. Siblings merge when their ``step_key`` is the same (not only the
    same text: "3+4=7" and "3 + 4 = 7." are one step, and budget is not spent valuing it twice); a merged step
    adds to its sibling's ``samples`` (the count of times the policy wrote it) and to the tree's
    ``meta["merged_samples"]``. ``token_ids``: what the policy generated (None for a step given as text).
    Returns the node (new or merged), or None for an empty step that did not end the sequence.
    """
    before = states[parent]
    tr = await ctx.env.step(before, text, token_ids=token_ids, ended=ended)
    step_text = tr.state.steps[-1]
    if not step_text and not ended:
        return None  # an empty step carries no information
    key = step_key(ctx.env, step_text)
    for c in tree.children(parent, kind=None):
        if step_key(ctx.env, tree.text[c]) == key:
            tree.samples[c] += 1
            tree.meta["merged_samples"] = tree.meta.get("merged_samples", 0) + 1
            return c
    after = tr.state
    if after.token_ids[:len(before.token_ids)] != before.token_ids or not after.text.startswith(before.text):
        raise ValueError(f"environment {type(ctx.env).__name__}: a step must extend its state's token ids and "
                         "text (a child's context is its parent's plus new tokens)")
    new_ids, new_text = after.token_ids[len(before.token_ids):], after.text[len(before.text):]
    n_obs = len(tr.observation_ids)
    ids = new_ids[:len(new_ids) - n_obs]  # the action's own ids, as the env appended them
    rendered = new_text[:len(new_text) - len(tr.observation)]
    truncated = tr.truncated or (finish_reason == "length" and not tr.terminated)
    node = tree.add(parent, step_text, n_tokens=len(ids), logprob=logprob, reward=tr.reward,
                    terminated=tr.terminated, truncated=truncated, info={"finish_reason": finish_reason, **tr.info},
                    token_ids=ids, rendered=rendered, obs=tr.observation, obs_ids=tr.observation_ids)
    states[node] = after
    return node


async def expand(tree: Tree, states: dict[int, State], node: int, ctx: SearchContext, k: int,
                 prior_temperature: float = 1.0, widen: int = 1) -> list[int]:
    """Sample ``k`` next steps from ``node`` as one request and add them as children; return its children.

    Identical step texts are merged (``add_step``), so sibling pairs never compare a step with itself. When
    all k samples merged into one step, the request is repeated up to ``widen`` times: a node with one child
    gives no pair, and its siblings are what the budget should buy. Children that Monte Carlo completions
    added earlier are children too. Priors are set over all of them.
    """
    for _ in range(1 + widen):
        results = await ctx.policy.generate([ctx.env.render(states[node])], step_params(ctx, k))
        record_generation(tree, results)
        for c in results[0]:
            ended = c.finish_reason == "stop" and c.stop_reason is None
            await add_step(tree, states, node, ctx, c.text, c.token_ids, logprob=c.logprob,
                           finish_reason=c.finish_reason, ended=ended)
        if k < 2 or len(tree.children(node)) >= 2:
            break
    children = tree.children(node)
    set_priors(tree, children, prior_temperature)
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
                   truncated_reward: float = 0.0, costs: list[int] | None = None) -> list[tuple[int, float]]:
    """Complete the episode from ``node`` ``n`` times and add every completion to the tree.

    Each completion is inserted step by step (``add_step``), merging with existing nodes, so nothing
    generated is thrown away: a completion is a path of the tree, later search walks on it, and backing its
    outcome up from its last node counts it in every node it passed through. For a reasoning environment a
    completion is one request of ``n`` (no stop) cut into steps in token space; for an ``interactive`` one
    (an agent) each completion alternates one action and the environment's observation until the episode
    ends or ``rollout_max_tokens`` are spent, the ``n`` of them in flight together. The outcomes are also
    counted in ``node``'s ``mc_correct``/``mc_total``. With ``ctx.rollout_by_step`` a reasoning completion
    goes step by step as an agent's does: a step the environment's check ends (a slip) ends the completion
    there, so the tokens a whole completion would write after it are never generated. Returns ``(last node, reward)`` per completion
    (``truncated_reward`` when it ended without an answer). A final node is its own outcome. ``costs``, when
    given, receives each completion's generated tokens in the same order (what flat sampling's equal-spend cut
    reads).
    """
    if tree.is_final(node):
        r = leaf_value(tree, node, truncated_reward)
        return [(node, r)] * n
    if n <= 0:
        return []
    if getattr(ctx.env, "interactive", False) or ctx.rollout_by_step:
        played = await asyncio.gather(*(play_out(tree, states, node, ctx) for _ in range(n)))
        lasts, spent = [last for last, _ in played], [tokens for _, tokens in played]
    else:
        # no step boundary, but an env may say where an episode is over (code: the body ended), so a
        # completion does not run on past it
        params = ctx.sampling.with_(n=n, stop=tuple(getattr(ctx.env, "episode_stop", ())),
                                    max_tokens=ctx.rollout_max_tokens)
        results = await ctx.policy.generate([ctx.env.render(states[node])], params)
        record_generation(tree, results)
        lasts = [await add_completion(tree, states, node, ctx, c) for c in results[0]]
        spent = [c.n_tokens for c in results[0]]
    if costs is not None:
        costs.extend(spent)
    out = []
    for last in lasts:
        reward = leaf_value(tree, last, truncated_reward) if last != node else None
        reward = truncated_reward if reward is None else reward
        out.append((last, reward))
        tree.mc_total[node] += 1
        tree.mc_correct[node] += int(succeeded(tree, last, ctx.success))
    return out


def succeeded(tree: Tree, node: int, threshold: float = 1.0) -> bool:
    """Whether ``node`` ended the episode successfully (``envs.base.is_success``: the env's word, or a
    reward at or above ``threshold``)."""
    return bool(tree.terminated[node]) and is_success(tree.reward[node], tree.info[node], threshold)


async def play_out(tree: Tree, states: dict[int, State], node: int, ctx: SearchContext) -> tuple[int, int]:
    """One multi-turn completion from ``node``: action, observation, action, ... until a final node or until
    it has generated ``rollout_max_tokens``; returns the last node reached (every step is in the tree) and
    the tokens it generated."""
    spent = 0
    while not tree.is_final(node) and spent < ctx.rollout_max_tokens:
        params = step_params(ctx, 1).with_(max_tokens=min(ctx.sampling.max_tokens, ctx.rollout_max_tokens - spent))
        results = await ctx.policy.generate([ctx.env.render(states[node])], params)
        record_generation(tree, results)
        c = results[0][0]
        spent += c.n_tokens
        ended = c.finish_reason == "stop" and c.stop_reason is None
        child = await add_step(tree, states, node, ctx, c.text, c.token_ids, logprob=c.logprob,
                               finish_reason=c.finish_reason, ended=ended)
        if child is None:
            break
        node = child
    return node, spent


async def add_completion(tree: Tree, states: dict[int, State], node: int, ctx: SearchContext,
                         c: Completion) -> int:
    """Insert a multi-step completion below ``node`` step by step; return the last node it reached.

    It stops at the first final node (an answer, a budget), as the environment would; a new last step of a
    completion that ran out of tokens is truncated (``add_step``).
    """
    for piece in ctx.env.split(c.text, c.token_ids, c.token_logprobs, c.logprob):
        ended = piece.last and c.finish_reason == "stop"
        child = await add_step(tree, states, node, ctx, piece.text, piece.token_ids, logprob=piece.logprob,
                               finish_reason=c.finish_reason if piece.last else "stop", ended=ended)
        if child is None:
            continue
        node = child
        if tree.is_final(node):
            break
    return node


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
    """Value each of ``nodes`` by ``n`` completions at once; back every outcome up from where it ended.

    A final node is worth its own reward (backed up once: re-sampling it would add nothing). A node's
    value is the mean outcome of its completions; ``Tree.value`` of any node is then the mean over every
    completion that passed through it. All requests are issued together so the backend can batch them.
    """
    async def one(node: int) -> float:
        final = leaf_value(tree, node, truncated_reward)
        if final is not None:
            tree.backup(node, final)
            return final
        outcomes = await rollouts(tree, states, node, ctx, n, truncated_reward)
        for last, r in outcomes:
            tree.backup(last, r)
        return sum(r for _, r in outcomes) / len(outcomes) if outcomes else truncated_reward

    return list(await asyncio.gather(*(one(c) for c in nodes)))
