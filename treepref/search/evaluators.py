"""Where a node's value comes from: the evaluator a search is configured with (``search.options.evaluator``).

The methods differ most here: Tree-PLV and MCTS-DPO value a node by Monte Carlo completions, rStar-Math and
ReST-MCTS by a PRM, MCTS-DPO mixes the outcome with the policy's self-evaluation, SPaR asks a judge. A search
hands its new nodes to :func:`evaluate` and backs up what comes back, so each of these is a line of YAML::

    evaluator: {kind: rollouts, n: 2}                       # the default of MCTS (n = n_rollouts)
    evaluator: {kind: prm, model: runs/train-prm/model, aggregate: min}
    evaluator: {kind: pav, model: runs/train-pav/model}     # a trained PAV: (1 + sum of A along the path) / 2
    evaluator: {kind: steps, scorer: "treepref.domains.arithmetic:arithmetic_step_scorer", aggregate: min}
    evaluator: {kind: verifier, model: runs/train-verifier/model}
    evaluator: {kind: judge, k: 4}                          # the policy as judge: its pass rate
    evaluator: {kind: self_eval}                            # the policy's P("correct") for the step
    evaluator: {kind: mix, parts: [{kind: rollouts, n: 1, weight: 0.5}, {kind: self_eval, weight: 0.5}]}
    evaluator: {kind: advantage, prover: null, rollouts: 4, temperature: 0.7}   # PAV: progress under a prover
    evaluator: {kind: dpo_q, model: runs/train-q-value/model}   # a DPO policy's implicit reward of the step

Each returns, per node, the ``(node to back up from, value)`` pairs of its evidence: one pair at the node for
a score, one per completion (backed up from where it ended) for rollouts; a mix is one pair at the node, the
weighted mean of its parts. Every score is also recorded in ``tree.scores[node][<kind>]`` for the exports. A
final node is never evaluated: its reward is its value. A path's step scores are squashed by
``verifiers.backup`` (``min`` / ``last`` / ``product`` / ``mean``); steps a scorer cannot judge (None) are left
out, and a path with none judged is worth ``default``. A user's kind is registered in ``EVALUATORS`` as an
``Evaluator(required, optional, score)`` and is then named in YAML like these.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from treepref.backends.base import Coalescer
from treepref.envs.base import State
from treepref.registry import Registry, resolve
from treepref.tree import ROOT, Tree
from treepref.verifiers.trained import sigmoid

Evidence = list[tuple[int, float]]
TRAINED = ("prm", "verifier", "pav")  # kinds that read a folder ``treepref train`` wrote, named by its method

@dataclass(frozen=True)
class Evaluator:
    """An evaluator kind: the options a spec must give, those it may (with their defaults), and
    ``score(spec, tree, states, nodes, ctx) -> one value per node`` (async). ``rollouts`` and ``mix`` have no
    ``score``: their evidence is completions backed up from where they ended, or their parts' weighted mean.
    ``records``: ``score`` writes its own ``tree.scores`` entries (its value backed up is not the score it
    records, as with ``advantage``), so ``evaluate`` writes none under the kind's name. ``check(spec, where)``:
    the kind's own option checks, raising ``ValueError`` naming the option, run when the recipe loads."""

    required: tuple[str, ...] = ()
    optional: dict[str, Any] = field(default_factory=dict)
    score: Callable | None = None
    records: bool = False
    check: Callable[[dict, str], None] | None = None


def parse(spec: Any, where: str = "evaluator") -> dict:
    """``spec`` checked and completed with defaults (a plain dict, so a tree's meta records it as given).
    Raises ``ValueError`` naming the option at fault."""
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"{where} must be a mapping with a kind ({', '.join(EVALUATORS)}), got {spec!r}")
    kind = spec["kind"]
    entry = EVALUATORS.get(kind, key=f"{where}.kind")
    required, optional = entry.required, entry.optional
    known = {"kind", "weight", *required, *optional}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{where}: unknown option {unknown[0]!r} for kind {kind!r} (known: {', '.join(sorted(known))})")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"{where}: kind {kind!r} needs {missing[0]!r}")
    out = {"kind": kind, **optional, **spec}
    check_number(out.get("weight", 1.0), f"{where}.weight", low=0)
    if kind == "rollouts":
        check_number(out["n"], f"{where}.n", integer=True, low=1)
    if kind == "judge":
        check_number(out["k"], f"{where}.k", integer=True, low=1)
    if "aggregate" in out:
        from treepref.verifiers.backup import get_aggregator

        get_aggregator(out["aggregate"])  # raises for an unknown name
    if kind == "steps":
        if not isinstance(out["scorer"], str) or ":" not in out["scorer"]:
            raise ValueError(f"{where}.scorer must name an async step scorer as 'module:function'")
        _scorer(out["scorer"], f"{where}.scorer")  # fails now, naming it, rather than in the first tree
    if kind in TRAINED:
        _check_trained(out["model"], kind, f"{where}.model")
    if kind == "mix":
        parts = out["parts"]
        if not isinstance(parts, list) or not parts:
            raise ValueError(f"{where}.parts must be a non-empty list of evaluators")
        out["parts"] = [parse(p, f"{where}.parts[{i}]") for i, p in enumerate(parts)]
        if any(p["kind"] == "mix" for p in out["parts"]):
            raise ValueError(f"{where}: a mix cannot contain a mix")
        if sum(p.get("weight", 1.0) for p in out["parts"]) <= 0:
            raise ValueError(f"{where}: the parts' weights sum to 0")
    if entry.check is not None:
        entry.check(out, where)
    return out


def _trained_folder(folder: Any, key: str, what: str = "a folder written by treepref train") -> Path:
    """The model folder of a ``treepref train`` output named by option ``key``: a one-line error when there
    is no such folder."""
    from treepref.verifiers.trained import model_folder

    if not Path(str(folder)).is_dir():
        raise ValueError(f"{key}: no folder {folder!r} ({what})")
    return model_folder(str(folder))


def _check_trained(folder: Any, kind: str, key: str) -> None:
    """A trained scorer's folder exists and, where its summary says, holds a model of this ``kind`` (a PAV read
    as a PRM would misread its head)."""
    from treepref.verifiers.trained import read_method

    method = read_method(_trained_folder(folder, key))
    if method is not None and method != kind:
        raise ValueError(f"{key}: {folder} holds a trained {method}, not a {kind}")


def check_number(value: Any, key: str, *, integer: bool = False, low: float | None = None) -> None:
    """An evaluator option that must be a number (an integer where ``integer``) of at least ``low``: a
    ``ValueError`` naming ``key`` otherwise (a bool is no number)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (low is not None and value < low):
        what = "an integer" if integer else "a number"
        raise ValueError(f"{key} must be {what}{f' >= {low:g}' if low is not None else ''}, got {value!r}")


async def evaluate(spec: dict, tree: Tree, states: dict[int, State], nodes: list[int], ctx,
                   truncated_reward: float = 0.0) -> list[Evidence]:
    """The evidence for each of ``nodes`` (non-final), all evaluated together."""
    from treepref.search.base import rollouts

    kind = spec["kind"]
    if kind == "rollouts":
        return list(await asyncio.gather(*(rollouts(tree, states, n, ctx, spec["n"], truncated_reward)
                                           for n in nodes)))
    if kind == "mix":
        per_part = [await evaluate(p, tree, states, nodes, ctx, truncated_reward) for p in spec["parts"]]
        weights = [p.get("weight", 1.0) for p in spec["parts"]]
        out = []
        for i, n in enumerate(nodes):
            means = [sum(v for _, v in ev[i]) / len(ev[i]) if ev[i] else truncated_reward for ev in per_part]
            for part, m in zip(spec["parts"], means):
                tree.scores[n].setdefault(part["kind"], m)  # rollouts' mean outcome (scores record themselves)
            value = sum(w * m for w, m in zip(weights, means)) / sum(weights)
            tree.scores[n]["mix"] = value
            out.append([(n, value)])
        return out
    entry = EVALUATORS.get(kind)
    if entry.score is None:
        raise ValueError(f"evaluator kind {kind!r} has no score function")
    timeline = getattr(ctx, "timeline", None)
    if timeline is None:
        values = list(await entry.score(spec, tree, states, nodes, ctx))
    else:
        with timeline.evaluating():
            values = list(await entry.score(spec, tree, states, nodes, ctx))
    if not entry.records:
        for n, v in zip(nodes, values):
            tree.scores[n][kind] = v
    return [[(n, v)] for n, v in zip(nodes, values)]


async def _constant(spec, tree, states, nodes, ctx) -> list[float]:
    return [float(spec["value"]) for _ in nodes]


async def _steps(spec, tree, states, nodes, ctx) -> list[float]:
    scorer = _scorer(spec["scorer"])
    rows = await scorer([states[ROOT].problem] * len(nodes), [tree.steps(n) for n in nodes])
    return [_squash(row, spec) for row in rows]


async def _prm(spec, tree, states, nodes, ctx) -> list[float]:
    """Step scores of each node's path, read on the tree's own ids."""
    return [_squash(row, spec) for row in await _path_scores(spec["model"], "prm", tree, nodes)]


async def _pav(spec, tree, states, nodes, ctx) -> list[float]:
    """A trained PAV's advantages along each node's path (the tree's ids), aggregated, clipped to [-1, 1] and
    squashed to [0, 1] by (1 + A) / 2, the scale of the values MCTS and beam compare with rewards, ``fpu`` and
    ``truncated_reward``. The default ``sum`` is the progress from the prompt: advantages telescope, so the sum
    along a path estimates V(node) − V(prompt) under the prover, which compares nodes under different parents
    (beam's candidates) and at different depths; ``last`` is the node's own step's progress (a ranking of
    siblings), ``min`` its worst step. A node with no step (the root) is worth ``default``. The node's own step's
    advantage is recorded as ``scores["pav_advantage"]`` beside the value (``scores["pav"]``)."""
    from treepref.verifiers.backup import get_aggregator
    from treepref.verifiers.progress import as_unit

    rows = await _path_scores(spec["model"], "pav", tree, nodes)
    out = []
    for n, row in zip(nodes, rows):
        if not row:
            out.append(float(spec["default"]))
            continue
        tree.scores[n]["pav_advantage"] = row[-1]
        out.append(as_unit(max(-1.0, min(1.0, get_aggregator(spec["aggregate"])(row)))))
    return out


async def _path_scores(folder: str, method: str, tree: Tree, nodes: list[int]) -> list[list[float]]:
    """A stepwise scorer's score of every step on each node's path: the steps' ids as the tree holds them,
    after what the scorer was trained to read first (``row``: the tree's prompt ids, or its own prompt)."""
    from treepref.extract.common import problem_of

    scorer, question = _trained(folder, method), problem_of(tree).question
    return await _batcher(folder, method).submit(
        [scorer.row(tree.token_ids[ROOT], [tree.token_ids[i] for i in tree.path(n)], question) for n in nodes], None)


async def _dpo_q(spec, tree, states, nodes, ctx) -> list[float]:
    """A step-level Q-value model (a policy trained by step-level DPO, ``verifiers.trained.TrainedQ``): each
    node's action scored β·(log π_θ − log π_ref) given its parent's context, on the tree's own ids. A terminated
    action gets EOS after it, as the trainer appended it to a final side (the Q it learnt is of that sequence).
    Not squashed: a Q on the implicit reward's scale ranks siblings (``q_guided``), not a success probability."""
    options = (spec["reference"], spec["device"], spec["beta"])
    model = _trained(spec["model"], "dpo_q", *options)
    eos = (model.eos_id,) if model.eos_id is not None else ()
    rows = [(tuple(tree.prompt_ids(tree.parent[n])), tuple(tree.token_ids[n]) + (eos if tree.terminated[n] else ()))
            for n in nodes]
    ratios = await _batcher(spec["model"], "dpo_q", *options).submit(rows, None)
    return [model.beta * r for r in ratios]


def _check_dpo_q(spec: dict, where: str) -> None:
    """The folder holds a policy ``treepref train`` wrote (its summary names the base model it started from, the
    reference), or the spec names the reference and beta."""
    from treepref.verifiers.trained import POLICY_METHODS, read_summary

    folder = spec["model"]
    summary = read_summary(_trained_folder(folder, f"{where}.model", "a policy written by treepref train, "
                                                                      "method dpo"))
    if summary is not None and summary.get("method") not in POLICY_METHODS:
        raise ValueError(f"{where}.model: {folder} holds a trained {summary.get('method')}, not a policy "
                         f"({', '.join(POLICY_METHODS)})")
    if spec["reference"] is None and not (summary or {}).get("base_model"):
        raise ValueError(f"{where}.reference: {folder} names no base model; give the reference policy")
    if not isinstance(spec["device"], str):
        raise ValueError(f"{where}.device must be a torch device name (cpu, cuda, cuda:1), got {spec['device']!r}")
    if spec["beta"] is not None:
        check_number(spec["beta"], f"{where}.beta")
        if spec["beta"] <= 0:
            raise ValueError(f"{where}.beta must be > 0, got {spec['beta']!r}")
    elif not (((summary or {}).get("config") or {}).get("loss") or {}).get("beta"):
        raise ValueError(f"{where}.beta: {folder} names no loss beta; give beta")


async def _verifier(spec, tree, states, nodes, ctx) -> list[float]:
    """The score of each node's whole context."""
    return await _batcher(spec["model"], "verifier").submit([tuple(tree.prompt_ids(n)) for n in nodes], None)


async def _judge(spec, tree, states, nodes, ctx) -> list[float]:
    from treepref.backends.base import Sampling
    from treepref.verifiers.judge import judge_nodes

    sampling = Sampling(temperature=spec["temperature"], max_tokens=spec["max_tokens"])
    rates = await judge_nodes(tree, states[ROOT].problem, nodes, ctx.policy, k=spec["k"], sampling=sampling)
    return [0.5 if r is None else r for r in rates]  # no parsable verdict: undecided


async def _self_eval(spec, tree, states, nodes, ctx) -> list[float]:
    from treepref.verifiers.self_eval import SelfEvaluator

    if not callable(getattr(ctx.policy, "score", None)):
        raise ValueError("evaluator self_eval needs a policy with score() (the hf or vllm backend)")
    return await SelfEvaluator(ctx.policy).score_nodes(tree, states[ROOT].problem, nodes)


def _squash(row, spec: dict) -> float:
    from treepref.verifiers.backup import get_aggregator

    judged = [float(v) for v in row if v is not None]
    return get_aggregator(spec["aggregate"])(judged) if judged else float(spec["default"])


@functools.lru_cache(maxsize=8)
def _trained(folder: str, method: str, reference: str | None = None, device: str = "cpu", beta: float | None = None):
    """A trained scorer, loaded once per process however many trees use it (``dpo_q``: a policy and its
    reference, read as a Q-value model)."""
    from treepref.verifiers.trained import load_q_model, load_trained

    if method == "dpo_q":
        return load_q_model(folder, reference=reference, device=device, beta=beta)
    scorer = load_trained(folder)
    if scorer.method != method:
        raise ValueError(f"evaluator {method}: {folder} holds a trained {scorer.method}, not a {method}")
    return scorer


_BATCHERS: dict[tuple, tuple[asyncio.AbstractEventLoop, Coalescer]] = {}


def _batcher(folder: str, method: str, *options) -> Coalescer:
    """One batcher per trained scorer and event loop: the evaluations of every simulation and tree in flight
    in one loop tick become one forward pass (in a worker thread, so generation goes on meanwhile), as
    policy requests become one engine batch. ``options``: ``_trained``'s (a Q-value model's reference, device,
    beta)."""
    loop = asyncio.get_running_loop()
    key = (folder, method, *options)
    if key not in _BATCHERS or _BATCHERS[key][0] is not loop:  # a batcher serves the loop it was made in
        scorer = _trained(folder, method, *options)

        async def run(requests):
            rows = [row for items, _ in requests for row in items]
            if method in ("prm", "pav"):  # per-step scores of each path
                flat = await asyncio.to_thread(scorer.score_many, rows)
            elif method == "dpo_q":  # log-ratios of (context, action) rows; the caller scales by beta
                flat = await asyncio.to_thread(scorer.log_ratios, rows)
            else:
                flat = [sigmoid(x) for x in await asyncio.to_thread(scorer.score_ids, rows)]
            out, i = [], 0
            for items, _ in requests:
                out.append(flat[i:i + len(items)])
                i += len(items)
            return out

        _BATCHERS[key] = (loop, Coalescer(run, max_prompts=256, serial=True))
    return _BATCHERS[key][1]


@functools.lru_cache(maxsize=32)
def _scorer(name: str, key: str = "evaluator.scorer"):
    return resolve(name, what="step scorer", key=key)


# Kinds by name; a user's registers the same way (``EVALUATORS.register("mine", Evaluator(("x",), {}, score))``).
EVALUATORS = Registry("evaluator kind", {
    "rollouts": Evaluator((), {"n": 1}),
    "constant": Evaluator(("value",), {}, _constant),
    "prm": Evaluator(("model",), {"aggregate": "min", "default": 0.5}, _prm),
    "pav": Evaluator(("model",), {"aggregate": "sum", "default": 0.5}, _pav),
    "steps": Evaluator(("scorer",), {"aggregate": "min", "default": 0.5}, _steps),
    "verifier": Evaluator(("model",), {}, _verifier),
    "judge": Evaluator((), {"k": 4, "temperature": 0.7, "max_tokens": 192}, _judge),
    "self_eval": Evaluator((), {}, _self_eval),
    "mix": Evaluator(("parts",), {}),
    "advantage": "treepref.search.prover:EVALUATOR",  # PAV's progress under a prover policy
    # a step-DPO policy as a Q-value model: beta and reference default to its training summary's
    "dpo_q": Evaluator(("model",), {"beta": None, "reference": None, "device": "cpu"}, _dpo_q, check=_check_dpo_q),
})
KINDS = EVALUATORS  # the name it had
