"""Progress as a value (PAV: Setlur et al. 2024, "Rewarding Progress: Scaling Automated Process Verifiers for LLM
Reasoning"): a step's process reward is the change it makes in the chance of reaching a right answer,
A(step) = V(after) − V(before), with V estimated by Monte Carlo completions from a *prover* policy that may
differ from the one that searches (the policy itself at another temperature, or a second model)::

    evaluator: {kind: advantage, prover: null, rollouts: 4, temperature: 0.7}        # the policy as prover
    evaluator: {kind: advantage, prover: {backend: hf, name: HuggingFaceTB/SmolLM2-360M-Instruct}, alpha: 1.0}

Per valued node the tree records ``scores["prover_value"]`` (V after the step), ``scores["advantage"]`` (None at
the root; ``verifiers.progress`` reads both, for final steps too) and ``info["prover"]`` (the completions that
reached the answer, out of how many; ``"text": True`` where the prover has another tokenizer and continued the
decoded text instead of the tree's ids). V(before) is the parent's own recorded value, so it is estimated once
per parent, however many children ask for it.

What the search backs up (``backup``): ``"value"`` (the default), ``V + alpha * A``, where V is the node's Monte
Carlo value from the search policy's own completions when it has one (a ``mix`` that runs ``rollouts`` first, even
at weight 0) and the prover's value otherwise; or ``"advantage"``, A alone (0 at the root). The default keeps the
backed-up number a success probability, the scale MCTS's and beam's ``fpu``, ``virtual_value`` and
``truncated_reward`` are in and one that compares across depths: advantages telescope along a path (their sum
from the root is V(leaf) − V(root)), so a mean of advantages over a subtree is no value of it. ``alpha`` (0.5)
adds PAV's bonus for progress, Q + α·A: with the policy as prover it only sharpens the differences between
siblings (they share V(before)); with a distinct prover it adds what that prover sees. ``alpha: 0`` backs up the
values alone, and the advantages are still recorded for the exports (``value="advantage"``).

The prover's completions are evidence, never steps of the tree: another policy's (or temperature's) text would
otherwise become siblings of the policy's steps and sides of its pairs. Each estimate runs
``search.base.rollouts`` on a scratch tree rooted at the node's state, so completions are split, stepped and
judged by the environment exactly as the search's own rollouts are (its verifier, step check and success rule).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import typing
from typing import Any

from treepref.search.evaluators import Evaluator, check_number
from treepref.tree import NO_PARENT, ROOT, Tree
from treepref.verifiers.progress import ADVANTAGE_KEY, VALUE_KEY, advantage, prover_value

BACKUPS = ("value", "advantage")
OPTIONS = {"prover": None, "rollouts": 4, "temperature": None, "max_tokens": None, "alpha": 0.5, "backup": "value"}


def check(spec: dict, where: str) -> None:
    """The advantage kind's options (``evaluators.parse`` runs this when a recipe loads)."""
    check_number(spec["rollouts"], f"{where}.rollouts", integer=True, low=1)
    if spec["temperature"] is not None:
        check_number(spec["temperature"], f"{where}.temperature", low=0)
    if spec["max_tokens"] is not None:
        check_number(spec["max_tokens"], f"{where}.max_tokens", integer=True, low=1)
    check_number(spec["alpha"], f"{where}.alpha")
    if spec["backup"] not in BACKUPS:
        raise ValueError(f"{where}.backup must be one of {', '.join(BACKUPS)}, got {spec['backup']!r}")
    spec["prover"] = _model_section(spec["prover"], f"{where}.prover")


def _model_section(prover: Any, where: str) -> dict | None:
    """A prover given like the recipe's ``model`` section, completed with its defaults (None: the search's own
    policy). The backend is checked by name only: nothing loads until a search needs the prover."""
    if prover is None:
        return None
    from treepref.backends import BACKENDS
    from treepref.config import ModelSection
    from treepref.options import coerce

    if not isinstance(prover, dict):
        raise ValueError(f"{where} must be a model section {{backend, name, options}} or null (the search's own "
                         f"policy), got {prover!r}")
    known = [f.name for f in dataclasses.fields(ModelSection)]
    unknown = sorted(set(prover) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    hints = typing.get_type_hints(ModelSection)
    out = dataclasses.asdict(ModelSection())
    out.update({k: coerce(v, hints[k], source=None, key=f"{where}.{k}") for k, v in prover.items()})
    BACKENDS.check(out["backend"], key=f"{where}.backend")
    return out


async def score(spec: dict, tree: Tree, states: dict, nodes: list[int], ctx) -> list[float]:
    """The value to back up for each node (``backup``), recording V and A on the way."""
    return list(await asyncio.gather(*(_progress(spec, tree, states, n, ctx) for n in nodes)))


async def _progress(spec: dict, tree: Tree, states: dict, node: int, ctx) -> float:
    """A(node) from V of the node and of its parent (each estimated at most once), recorded; the value backed up."""
    parent = tree.parent[node]
    await asyncio.gather(*(_value(spec, tree, states, n, ctx) for n in (parent, node) if n != NO_PARENT))
    a = advantage(tree, node, ctx.success)
    tree.scores[node][ADVANTAGE_KEY] = a
    if spec["backup"] == "advantage":
        return a or 0.0
    base = tree.mc_value(node)
    base = prover_value(tree, node, ctx.success) if base is None else base
    return base + spec["alpha"] * (a or 0.0)


# Estimates in flight, by (tree, node): siblings valued at once wait for one estimate of their parent.
_IN_FLIGHT: dict[tuple[int, int], asyncio.Future] = {}


async def _value(spec: dict, tree: Tree, states: dict, node: int, ctx) -> None:
    """Estimate V(node) once: a recorded value is reused (a parent's for all its children, also after a
    checkpoint), and an estimate already in flight is awaited rather than asked for again."""
    if VALUE_KEY in tree.scores[node] or tree.is_final(node):
        return
    key = (id(tree), node)
    task = _IN_FLIGHT.get(key)
    if task is None:
        task = _IN_FLIGHT[key] = asyncio.ensure_future(_estimate(spec, tree, states, node, ctx))
        task.add_done_callback(lambda _: _IN_FLIGHT.pop(key, None))
    await task


async def _estimate(spec: dict, tree: Tree, states: dict, node: int, ctx) -> None:
    """V(node) from ``rollouts`` completions of the prover from the node's state (its exact ids), judged by
    ``search.base.rollouts`` on a scratch tree, so none of them enters ``tree``."""
    from treepref.search.base import rollouts

    prover, as_text = _prover(spec, ctx, states[ROOT].text)
    sampling = ctx.sampling if spec["temperature"] is None else ctx.sampling.with_(temperature=spec["temperature"])
    pctx = dataclasses.replace(ctx, policy=prover, sampling=sampling, checkpoint=None, pool=None,
                               rollout_max_tokens=spec["max_tokens"] or ctx.rollout_max_tokens)
    scratch = Tree(problem_id=tree.problem_id, prompt=tree.prompt, answer=tree.answer)
    await rollouts(scratch, {ROOT: states[node]}, ROOT, pctx, spec["rollouts"])
    correct, total = scratch.mc_correct[ROOT], scratch.mc_total[ROOT]
    tree.scores[node][VALUE_KEY] = correct / total
    tree.info[node]["prover"] = {"correct": correct, "total": total, **({"text": True} if as_text else {})}
    _count(tree, scratch.meta, own=prover is ctx.policy)


def _count(tree: Tree, spent: dict, own: bool) -> None:
    """The prover's tokens and requests in ``tree.meta``; the search's own policy as prover spends the search's
    ``generated_tokens`` too (its ``token_budget`` pays for them, as the runner counts them)."""
    meta = tree.meta
    pairs = [("prover_tokens", "generated_tokens"), ("prover_requests", "policy_requests")]
    for mine, theirs in pairs:
        meta[mine] = meta.get(mine, 0) + spent.get(theirs, 0)
        if own:
            meta[theirs] = meta.get(theirs, 0) + spent.get(theirs, 0)


# A prover section (as JSON) -> its policy, built once per process, and whether it shares the policy's tokenizer.
_PROVERS: dict[str, tuple[Any, bool]] = {}


def _prover(spec: dict, ctx, probe: str) -> tuple[Any, bool]:
    """The policy that completes states, and whether it continues text (``TextProver``) rather than ids."""
    if spec["prover"] is None:
        return ctx.policy, False
    key = json.dumps(spec["prover"], sort_keys=True, default=str)
    if key not in _PROVERS:
        from treepref.backends import make_policy

        section = spec["prover"]
        prover = make_policy(section["backend"], section["name"], **section["options"])
        _PROVERS[key] = prover, _same_tokens(prover, ctx.policy, probe)
    prover, same = _PROVERS[key]
    return (prover, False) if same else (TextProver(prover, ctx.policy), True)


def _same_tokens(prover, policy, probe: str) -> bool:
    """Whether ``prover`` reads the tree's ids as ``policy`` wrote them: both encode the first prompt alike."""
    try:
        return list(prover.encode(probe)) == list(policy.encode(probe))
    except Exception:  # a backend without a local tokenizer (a server): it gets text
        return False


class TextProver:
    """A prover with another tokenizer, seen through the search policy's: it continues the context as text (the
    policy's decoding of the tree's ids) and its completions come back in the policy's ids, so the environment
    splits and judges them as it does the policy's own (token log-probs are dropped: they are the prover's)."""

    def __init__(self, prover, policy) -> None:
        self.prover, self.policy = prover, policy

    async def generate(self, prompts, params):
        from treepref.tokens import step_ids

        texts = [p if isinstance(p, str) else self.policy.decode(list(p)) for p in prompts]
        rows = await self.prover.generate(texts, params)
        return [[dataclasses.replace(c, token_ids=tuple(step_ids(self.policy, c.text)), token_logprobs=())
                 for c in row] for row in rows]

    def encode(self, text: str) -> list[int]:
        return self.policy.encode(text)

    def decode(self, token_ids) -> str:
        return self.policy.decode(token_ids)

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.policy.chat_prompt(messages)

    def count_tokens(self, text: str) -> int:
        return self.policy.count_tokens(text)


EVALUATOR = Evaluator((), OPTIONS, score, records=True, check=check)
