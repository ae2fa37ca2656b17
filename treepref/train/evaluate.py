"""Does training on treepref's data help? Held-out accuracy of a policy, and best-of-N reranking.

Everything here works on the token ids the policy generated. A held-out problem's prompt is the
environment's rendering of its root (``env.initial(problem).token_ids``: chat template, system prompt and
worked examples included); each sampled solution is cut into steps in token space (``env.split``) and
walked through ``env.step`` exactly as a search inserts a completion into a tree (``search.base
.add_completion``): it ends at the first step that states an answer (or where the model stopped, or at
the env's depth/token limit), and the env's verifier says whether that answer is right. A trained verifier
or PRM then scores ``prompt ids + solution ids``; no text is re-tokenised.

* :func:`sample_solutions` - ``n`` solutions per problem from a policy, as :class:`Solution` records.
* :func:`majority`, :func:`by_score`, :func:`weighted_majority` - pick one solution of a problem (ties: the
  earliest sample); the last is a vote weighted by a scorer (:func:`vote_weights`).
* :func:`rerank_report` - accuracy with a 95% Wilson interval of each way of picking, plus the oracle
  (any of N right), the first sample and the mean over samples.
* :func:`policy_report` - held-out accuracy of a policy: greedy and/or the mean over a few samples.
* :func:`evaluate` - all of it for one model: build the backend, sample, score with a trained verifier
  and/or PRM (``treepref.verifiers.trained``), report.

Heavy packages (vLLM, torch) are imported only by the backends and trained verifiers that need them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

from treepref.backends.base import Completion, Sampling
from treepref.problems import Problem

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


@dataclass
class Solution:
    """One sampled solution of a problem, as the policy generated it.

    ``token_ids`` are the completion's ids up to and including the step that ended the solution (what a
    model generated after its answer step is dropped, as a search drops it); ``steps_ids`` are the same ids
    cut into steps (each step's delimiter included), so ``sum(steps_ids, []) == token_ids``.
    """

    text: str  # the steps' text as generated, joined (delimiters included)
    token_ids: list[int]
    steps_ids: list[list[int]]
    steps: list[str]  # each step's cleaned text (the env's)
    mean_logprob: float  # mean per-token log-prob of ``token_ids`` under the sampling policy (nan if unknown)
    answer: str | None  # the final answer the solution states (None: it stated none)
    correct: bool
    finished: bool  # it ended with an answer or the model's end of sequence (not cut by a limit)
    prompt_ids: list[int] = field(default_factory=list, repr=False)  # the rendered root prompt it continues
    generated_tokens: int = 0  # what the policy generated for it, including anything after its final step
    question: str = ""  # the problem's question (what a scorer trained with ``input: question`` reads)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def _bind(env, policy):
    """The env with the policy's tokenizer when it was left without one (as ``SearchContext`` does)."""
    if getattr(env, "tokenizer", False) is None and hasattr(policy, "encode"):
        return dataclasses.replace(env, tokenizer=policy)
    return env


async def to_solution(env, problem: Problem, c: Completion, prompt_ids: Sequence[int] | None = None) -> Solution:
    """Walk one whole completion through ``env`` step by step, the way a search inserts it into a tree."""
    state = env.initial(problem)
    prompt = list(prompt_ids) if prompt_ids is not None else list(state.token_ids)
    pieces = env.split(c.text, c.token_ids, c.token_logprobs, c.logprob)
    texts, ids, steps, steps_ids, lp = [], [], [], [], 0.0
    answer, correct, finished = None, False, False
    for piece in pieces:
        ended = piece.last and c.finish_reason == "stop"
        if not env.clean(piece.text) and not ended:
            continue  # an empty step (``search.base.add_step`` skips it too)
        tr = await env.step(state, piece.text, token_ids=piece.token_ids, ended=ended)
        state = tr.state
        texts.append(piece.text)
        ids.extend(piece.token_ids)
        steps.append(state.steps[-1])
        steps_ids.append(list(piece.token_ids))
        lp += piece.logprob
        if tr.terminated:
            answer = tr.info.get("answer")
            correct = tr.reward is not None and tr.reward >= 1.0
            finished = True
            break
        if tr.truncated:
            break
    mean = lp / len(ids) if ids else math.nan
    return Solution("".join(texts), ids, steps_ids, steps, mean, answer, correct, finished, prompt, c.n_tokens,
                    problem.question)


async def sample_solutions(policy, env, problems: Sequence[Problem], *, n: int, sampling: Sampling | None = None,
                           max_tokens: int = 320) -> list[list[Solution]]:
    """``n`` whole solutions per problem from ``policy``, in one request per problem (all in flight at once,
    so the backend batches them). ``sampling`` gives temperature/top_p/seed (its ``n``, ``stop`` and
    ``max_tokens`` are replaced: no step stop, ``max_tokens`` for the whole solution); temperature 0 is greedy.
    """
    env = _bind(env, policy)
    params = (sampling or Sampling(temperature=0.8, top_p=0.95)).with_(n=n, stop=(), max_tokens=max_tokens)
    prompts = [list(env.render(env.initial(p))) for p in problems]

    async def one(problem: Problem, prompt: list[int]) -> list[Solution]:
        (completions,) = await policy.generate([prompt], params)
        return [await to_solution(env, problem, c, prompt) for c in completions]

    return list(await asyncio.gather(*(one(p, ids) for p, ids in zip(problems, prompts))))


# -- statistics -----------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% by default); ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(k: int, n: int, z: float = Z95) -> dict:
    lo, hi = wilson(k, n, z)
    return {"correct": k, "n": n, "accuracy": k / n if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


# -- picking one solution -------------------------------------------------------------------------------
def _same_answer(a: str, b: str) -> bool:
    from treepref.verifiers.math import answers_match

    return answers_match(a, b)


def _answer_groups(solutions: Sequence[Solution]) -> list[list[int]]:
    """The indices of the solutions that state an answer, grouped by it (equal values are one answer: "12" =
    "12.0"), groups in order of their answer's first appearance and each in sample order."""
    groups: list[list[int]] = []
    for i, s in enumerate(solutions):
        if s.answer is None:
            continue
        for g in groups:
            if _same_answer(s.answer, solutions[g[0]].answer):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def majority(solutions: Sequence[Solution]) -> Solution | None:
    """Majority vote over the answers the solutions state (equal values are one answer: "12" = "12.0").

    Solutions without an answer do not vote. Tie rule: among answers with the most votes, the one stated
    first in sample order wins (samples are exchangeable, so this is a fair coin that is reproducible), and
    the first solution stating it is returned. No answer at all: the first solution (None if there is none).
    """
    groups = _answer_groups(solutions)
    if not groups:
        return solutions[0] if solutions else None
    best = max(len(g) for g in groups)
    return solutions[next(g[0] for g in groups if len(g) == best)]  # groups are in order of first appearance


def weighted_majority(solutions: Sequence[Solution], weights: Sequence[float]) -> Solution | None:
    """Majority vote where each solution's vote counts its weight (a verifier's P(right), say): the answer with the
    most weight wins, and its highest-weighted solution is returned. This is how Math-Shepherd and "Let's Verify
    Step by Step" combine a verifier with self-consistency; with equal weights it is :func:`majority`.

    Weights must be >= 0 (nan counts 0). Ties go as in :func:`majority` (to the answer stated first, and within
    it to the earliest sample). No answer at all: the highest-weighted solution.
    """
    if len(solutions) != len(weights):
        raise ValueError(f"{len(solutions)} solutions but {len(weights)} weights")
    weights = [0.0 if w is None or math.isnan(w) else float(w) for w in weights]
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {min(weights)}")
    groups = _answer_groups(solutions)
    if not groups:
        return by_score(solutions, weights) if solutions else None
    totals = [math.fsum(weights[i] for i in g) for g in groups]
    group = groups[totals.index(max(totals))]  # index() finds the first of equal totals
    return solutions[max(group, key=lambda i: (weights[i], -i))]


def by_score(solutions: Sequence[Solution], scores: Sequence[float]) -> Solution | None:
    """The solution with the highest score; ties (and nan, which ranks lowest) go to the earliest sample."""
    if len(solutions) != len(scores):
        raise ValueError(f"{len(solutions)} solutions but {len(scores)} scores")
    best, top = None, -math.inf
    for s, v in zip(solutions, scores):
        v = -math.inf if v is None or math.isnan(v) else v
        if best is None or v > top:
            best, top = s, v
    return best


def pair_auc(solutions: Sequence[Sequence[Solution]], scores: Sequence[Sequence[float]]) -> float | None:
    """How often a score ranks a right solution above a wrong one of the same problem (ties count half),
    over every (right, wrong) pair within a problem; None when no problem has both."""
    wins = total = 0.0
    for sols, sc in zip(solutions, scores):
        good = [v for s, v in zip(sols, sc) if s.correct]
        bad = [v for s, v in zip(sols, sc) if not s.correct]
        for g in good:
            for b in bad:
                total += 1
                wins += 1.0 if g > b else 0.5 if g == b else 0.0
    return wins / total if total else None


def predicted_first_error(step_scores: Sequence[float], threshold: float = 0.5) -> int:
    """A PRM's guess at a solution's first wrong step: the first step scored below ``threshold``; -1 if none."""
    return next((i for i, v in enumerate(step_scores) if v < threshold), -1)


def first_error_f1(predicted: Sequence[int], truth: Sequence[int]) -> dict:
    """ProcessBench's score of first-error finding: ``error_accuracy`` (solutions with an error whose first
    wrong step was found exactly), ``correct_accuracy`` (solutions without one that were passed whole: -1),
    and ``f1``, their harmonic mean. A share is None when no solution is of its kind, and so is ``f1``."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} solutions")
    errors = [p == t for p, t in zip(predicted, truth) if t >= 0]
    clean = [p == -1 for p, t in zip(predicted, truth) if t < 0]
    a = sum(errors) / len(errors) if errors else None
    b = sum(clean) / len(clean) if clean else None
    f1 = None if a is None or b is None else (2 * a * b / (a + b) if a + b else 0.0)
    return {"error_accuracy": a, "correct_accuracy": b, "f1": f1, "n_error": len(errors), "n_correct": len(clean)}


def first_error_cases(problems: Sequence[Problem], solutions: Sequence[Sequence[Solution]],
                      step_scores: Sequence[Sequence[Sequence[float]]]) -> list[tuple[list[float], int]] | None:
    """``(step scores, first wrong step by the exact oracle)`` of each distinct solution that states an answer
    (``extract.quality.first_error``; -1 for none): what ProcessBench grades. None when a problem is not
    arithmetic (no oracle)."""
    from treepref.extract.quality import first_error

    if not all("expression" in (p.meta or {}) for p in problems):
        return None
    cases, seen = [], set()
    for problem, sols, scores in zip(problems, solutions, step_scores):
        for sol, steps in zip(sols, scores):
            key = (problem.id, tuple(sol.token_ids))
            if sol.answer is None or not steps or key in seen:
                continue
            seen.add(key)
            cases.append((list(steps), first_error(problem, sol.steps)))
    return cases


def first_error_at(cases: Sequence[tuple[Sequence[float], int]], threshold: float) -> dict:
    """:func:`first_error_f1` of ``cases`` with the first step scored below ``threshold`` as the guess."""
    return {**first_error_f1([predicted_first_error(s, threshold) for s, _ in cases], [t for _, t in cases]),
            "threshold": threshold}


def fit_threshold(cases: Sequence[tuple[Sequence[float], int]]) -> float:
    """The threshold with the best first-error F1 on ``cases``, as ProcessBench fits a PRM's on one split and
    applies it to the others: a head trained on mostly wrong steps scores everything low, and at 0.5 it would
    flag every first step. Candidates lie between consecutive distinct scores (the lowest wins ties)."""
    values = sorted({v for s, _ in cases for v in s})
    if not values:
        return 0.5
    candidates = [values[0] - 1e-6, *((a + b) / 2 for a, b in zip(values, values[1:])), values[-1] + 1e-6]
    best, best_f1 = candidates[0], -1.0
    for c in candidates:
        f1 = first_error_at(cases, c)["f1"] or 0.0
        if f1 > best_f1:
            best, best_f1 = c, f1
    return best


def first_error_report(problems: Sequence[Problem], solutions: Sequence[Sequence[Solution]],
                       step_scores: Sequence[Sequence[Sequence[float]]], threshold: float = 0.5) -> dict | None:
    """ProcessBench's score of a stepwise scorer on built-in arithmetic (:func:`first_error_cases`): its first
    step scored below ``threshold`` against the exact oracle's first wrong or off-track step; None when a
    problem is not arithmetic (no oracle)."""
    cases = first_error_cases(problems, solutions, step_scores)
    return None if cases is None else first_error_at(cases, threshold)


def rerank_report(problems: Sequence[Problem], solutions: Sequence[Sequence[Solution]],
                  scores: dict[str, Sequence[Sequence[float]]] | None = None, z: float = Z95,
                  votes: dict[str, Sequence[Sequence[float]]] | None = None) -> dict:
    """Accuracy of each way of picking one of a problem's N solutions, with its Wilson interval.

    ``scores`` maps a method's name to one score per solution per problem (higher = better); each becomes
    ``by_score``. Always reported: ``majority``; for reference ``first`` (the first sample: best-of-1),
    ``oracle`` (any of N right: the ceiling of any reranker) and ``mean_sample`` (right samples over all
    samples: the expected accuracy of a random pick; its interval treats samples as independent).
    Each scored method also gets ``pair_auc`` (see :func:`pair_auc`). ``votes`` maps a name to one weight (>= 0)
    per solution per problem (:func:`vote_weights`); each becomes ``<name>_vote``, :func:`weighted_majority`.
    """
    if len(problems) != len(solutions):
        raise ValueError(f"{len(problems)} problems but {len(solutions)} solution lists")
    scores = scores or {}
    n = len(problems)
    out: dict[str, dict] = {
        "first": accuracy(sum(bool(s) and s[0].correct for s in solutions), n, z),
        "oracle": accuracy(sum(any(x.correct for x in s) for s in solutions), n, z),
        "mean_sample": accuracy(sum(x.correct for s in solutions for x in s), sum(len(s) for s in solutions), z),
        "majority": accuracy(sum(bool(m and m.correct) for m in map(majority, solutions)), n, z),
    }
    for name, sc in scores.items():
        if len(sc) != n:
            raise ValueError(f"scores {name!r}: {len(sc)} rows for {n} problems")
        picks = [by_score(s, v) for s, v in zip(solutions, sc)]
        out[name] = accuracy(sum(bool(p and p.correct) for p in picks), n, z)
        auc = pair_auc(solutions, sc)
        out[name]["pair_auc"] = round(auc, 4) if auc is not None else None
    for name, ws in (votes or {}).items():
        if len(ws) != n:
            raise ValueError(f"votes {name!r}: {len(ws)} rows for {n} problems")
        picks = [weighted_majority(s, w) for s, w in zip(solutions, ws)]
        out[f"{name}_vote"] = accuracy(sum(bool(p and p.correct) for p in picks), n, z)
    return out


def policy_report(greedy: Sequence[Sequence[Solution]] | None = None,
                  samples: Sequence[Sequence[Solution]] | None = None, z: float = Z95) -> dict:
    """Held-out accuracy of a policy: ``greedy`` (one solution per problem at temperature 0) and
    ``samples`` (the share of right solutions over k samples per problem), each with its Wilson interval
    (the samples' interval treats them as independent, so it is narrower than the problems warrant)."""
    out: dict = {}
    if greedy is not None:
        out["greedy"] = accuracy(sum(bool(s) and s[0].correct for s in greedy), len(greedy), z)
    if samples is not None:
        out["samples"] = accuracy(sum(x.correct for s in samples for x in s), sum(len(s) for s in samples), z)
        out["samples"]["per_problem"] = len(samples[0]) if samples else 0
        out["any_of_samples"] = accuracy(sum(any(x.correct for x in s) for s in samples), len(samples), z)
    return out


# -- scores from solutions ------------------------------------------------------------------------------
def logprob_scores(solutions: Sequence[Sequence[Solution]]) -> list[list[float]]:
    """The sampling policy's mean token log-prob of each solution (its confidence, length-normalised)."""
    return [[s.mean_logprob for s in sols] for sols in solutions]


# What a scorer's numbers are, for vote_weights: the policy's mean log-prob, a pairwise verifier's logit; any other
# (a PRM's or ORM's step scores, and so their min or last) is a P(good).
SCORE_KINDS = {"logprob": "logprob", "verifier": "logit"}


def vote_weights(kind: str, scores: Sequence[Sequence[float]]) -> list[list[float]]:
    """Scores as the weights of :func:`weighted_majority`'s votes (>= 0), by what the scores are: ``probability``
    (a PRM's or an ORM's P(right)) as they are; ``logit`` (a pairwise verifier's) through the logistic; ``logprob``
    (a mean token log-prob) as the geometric-mean token probability. Nothing to score (-inf) weighs 0."""
    from treepref.verifiers.trained import sigmoid

    how = {"probability": lambda x: max(x, 0.0), "logit": sigmoid, "logprob": math.exp}.get(kind)
    if how is None:
        raise ValueError(f"vote weights from {kind!r} scores: use probability, logit or logprob")
    return [[how(x) for x in sc] for sc in scores]


def scorer_votes(scores: dict[str, Sequence[Sequence[float]]]) -> dict[str, list[list[float]]]:
    """Each scorer's scores as vote weights, by what its numbers are (``SCORE_KINDS``; P(good) otherwise). A PAV's
    advantages (``pav_*``) are no P(right): it gets no vote."""
    return {name: vote_weights(SCORE_KINDS.get(name, "probability"), sc) for name, sc in scores.items()
            if not name.startswith("pav_")}


def _flat(solutions):
    return [s for sols in solutions for s in sols]


def _unflat(values: list, solutions) -> list[list]:
    it = iter(values)
    return [[next(it) for _ in sols] for sols in solutions]


def _unique(keys: list) -> tuple[list, list[int]]:
    """The distinct keys in first-seen order, and each key's index among them (identical samples are scored once)."""
    index: dict = {}
    where = [index.setdefault(k, len(index)) for k in keys]
    return list(index), where


def verifier_scores(verifier, solutions: Sequence[Sequence[Solution]]) -> list[list[float]]:
    """A trained pairwise verifier's logit of what it reads for each solution (``TrainedVerifier.sequence``: the
    prompt ids, or its own short prompt, then the solution's ids); an empty solution scores -inf. Identical
    sequences are scored once."""
    flat = _flat(solutions)
    keys, where = _unique([tuple(verifier.sequence(s.prompt_ids, s.steps_ids, s.question)) if s.token_ids else ()
                           for s in flat])
    live = [k for k in keys if k]
    logits = dict(zip(live, verifier.score_ids([list(k) for k in live]))) if live else {}
    values = [float(logits[keys[w]]) if keys[w] else -math.inf for w in where]
    return _unflat(values, solutions)


def prm_step_scores(prm, solutions: Sequence[Sequence[Solution]]) -> list[list[list[float]]]:
    """A trained PRM's P(good) (a PAV's advantage) at every step of every solution (``score_many`` on what the
    scorer reads: ``row``); identical solutions are scored once."""
    flat = _flat(solutions)
    keys, where = _unique([prm.row(s.prompt_ids, s.steps_ids, s.question) for s in flat])
    rows = prm.score_many(keys)
    return _unflat([rows[w] for w in where], solutions)


def aggregate(step_scores: Sequence[Sequence[Sequence[float]]], how: str) -> list[list[float]]:
    """Per-solution scores from per-step ones by an aggregator of ``verifiers.backup`` (``min``: the weakest
    step, ``last``: the final step, ``sum``: a PAV's progress from the prompt, ...); no steps scores -inf."""
    from treepref.verifiers.backup import get_aggregator

    fn = get_aggregator(how)
    return [[fn(v) if v else -math.inf for v in sols] for sols in step_scores]


# -- all of it for one model ----------------------------------------------------------------------------
def default_env(policy, problems: Sequence[Problem], *, max_depth: int | None = None, max_tokens: int = 320):
    """The env the benches search with: the policy's chat template and tokenizer, and for built-in arithmetic
    problems of one difficulty its matched worked examples (``arithmetic.worked_examples(d)``)."""
    from treepref.envs.reasoning import ReasoningEnv

    levels = {p.meta.get("difficulty") for p in problems}
    few_shot: tuple = ()
    if len(levels) == 1 and isinstance(d := next(iter(levels)), int):
        from treepref.domains.arithmetic import worked_examples

        few_shot = worked_examples(d)
        max_depth = max_depth or d + 3
    return ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=max_depth or 8,
                        max_tokens=max_tokens, few_shot=few_shot)


async def evaluate(model: str | None, *, problems: Sequence[Problem], n: int = 8, verifier: str | None = None,
                   prm: str | None = None, backend: str = "vllm", temperature: float = 0.8, top_p: float = 0.95,
                   seed: int = 0, max_tokens: int = 320, greedy: bool = True, policy=None, env=None,
                   backend_options: dict | None = None, scorer_options: dict | None = None,
                   keep_solutions: bool = False) -> dict:
    """Sample ``n`` solutions per problem from ``model`` (and a greedy one), then report.

    ``verifier`` / ``prm``: folders saved by ``treepref train`` (``load_trained``), used to rerank the
    samples next to majority vote and the policy's own mean log-prob; a PRM is reported as ``prm_min``
    (the weakest step) and ``prm_last`` (a PAV given as ``prm``: ``pav_min``, ``pav_last`` and ``pav_sum``, its
    advantages summed: the progress from the prompt); on built-in arithmetic a stepwise scorer also gets
    ProcessBench's first-error score (``first_error``: :func:`first_error_report`). ``policy``: an
    existing backend to use instead of building one (then it is not closed). ``env``: the environment (default
    :func:`default_env`). Returns
    ``{"policy": policy_report, "rerank": rerank_report, "generated_tokens", "seconds", ...}``; with
    ``keep_solutions`` also the solutions themselves (under ``"solutions"``, not JSON-ready).
    """
    t0 = time.perf_counter()
    own = policy is None
    if own:
        from treepref.backends import make_policy

        policy = make_policy(backend, model, **(backend_options or {}))
    try:
        env = _bind(env if env is not None else default_env(policy, problems, max_tokens=max_tokens), policy)
        sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed)
        samples = await sample_solutions(policy, env, problems, n=n, sampling=sampling, max_tokens=max_tokens)
        greedy_sols = None
        if greedy:
            greedy_sols = await sample_solutions(policy, env, problems, n=1, sampling=Sampling(temperature=0.0),
                                                 max_tokens=max_tokens)
    finally:
        if own and hasattr(policy, "close"):
            policy.close()
    t_sample = time.perf_counter() - t0
    scores: dict[str, list[list[float]]] = {"logprob": logprob_scores(samples)}
    first_errors: dict[str, dict] = {}
    timings = {"sampling": round(t_sample, 1)}
    from treepref.verifiers.trained import load_trained

    for folder in (verifier, prm):
        if folder is None:
            continue
        t1 = time.perf_counter()
        scorer = load_trained(folder, **(scorer_options or {}))
        if scorer.method == "verifier":
            scores["verifier"] = verifier_scores(scorer, samples)
        else:
            steps = prm_step_scores(scorer, samples)
            name = scorer.method  # a PRM's P(good), or a PAV's advantages (both stepwise)
            for how in ("min", "last", "sum") if name == "pav" else ("min", "last"):
                scores[f"{name}_{how}"] = aggregate(steps, how)
            # a step is called wrong below P(good) 0.5, or where a PAV sees it lose ground (A < 0)
            found = first_error_report(problems, samples, steps, threshold=0.0 if name == "pav" else 0.5)
            if found is not None:
                first_errors[name] = found
        timings[scorer.method] = round(time.perf_counter() - t1, 1)
        del scorer
    out = {"model": model, "problems": len(problems), "n": n, "temperature": temperature, "top_p": top_p,
           "seed": seed, "max_tokens": max_tokens,
           "policy": policy_report(greedy_sols, samples),
           "rerank": rerank_report(problems, samples, scores, votes=scorer_votes(scores)),
           "first_error": first_errors,
           "generated_tokens": sum(s.generated_tokens for sols in (samples + (greedy_sols or [])) for s in sols),
           "seconds": timings}
    if keep_solutions:
        out["solutions"] = {"samples": samples, "greedy": greedy_sols}
    return out
