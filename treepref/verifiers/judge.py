"""An LLM judge: sample several verdicts on a step (or a whole response) and report the pass rate.

A judge's single verdict is noisy, so SPaR-style recipes sample k verdicts and use the share judged
correct. Verdicts that cannot be parsed are *missing*, not failures: a model that rambles without
concluding says nothing about the step, and counting it as "incorrect" would bias the rate downwards.
So rate = correct / parsed, and None when nothing parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from treepref.backends.base import Policy, Sampling
from treepref.problems import Problem
from treepref.tree import Tree

SCORE_KEY = "judge"

STEP_TEMPLATE = (
    "You are checking one step of a solution.\n\n"
    "Question:\n{question}\n\n"
    "Steps so far:\n{steps}\n\n"
    "Candidate next step:\n{candidate}\n\n"
    "Is the candidate step correct (right arithmetic and logic, and a sensible way forward)? "
    "Explain briefly, then end with a line 'Verdict: correct' or 'Verdict: incorrect'."
)

RESPONSE_TEMPLATE = (
    "You are grading a response.\n\n"
    "Question:\n{question}\n\n"
    "Response:\n{candidate}\n\n"
    "Is the response correct? Explain briefly, then end with a line 'Verdict: correct' or "
    "'Verdict: incorrect'."
)

_POS = {"correct", "right", "yes", "true", "valid", "pass", "good"}
_NEG = {"incorrect", "wrong", "no", "false", "invalid", "fail", "bad", "not correct"}
_WORD = r"(not correct|incorrect|correct|right|wrong|yes|no|true|false|valid|invalid|pass|fail|good|bad)"
_VERDICT_RE = re.compile(r"(?:verdict|judgement|judgment|final answer|answer)\s*[:=\-]?\s*\**\s*\[*\s*" + _WORD + r"\b",
                         re.IGNORECASE)
_BRACKET_RE = re.compile(r"\[\[\s*" + _WORD + r"\s*\]\]", re.IGNORECASE)
_SCORE_RE = re.compile(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_LEAD_RE = re.compile(r"^\W*(yes|no|correct|incorrect)\b", re.IGNORECASE)


def parse_verdict(text: str, *, score_threshold: float = 0.5) -> bool | None:
    """True (correct), False (incorrect) or None (no verdict found).

    Recognised, in this order (the last match of a kind wins, since a verdict closes the text):
    ``Verdict: correct|incorrect`` (also yes/no, right/wrong, ...), ``[[correct]]``, ``Score: 7/10`` or
    ``Score: 0.8`` (passes at ``score_threshold`` of the scale; a bare number > 1 is read out of 10), and a
    leading ``Yes`` / ``No``.
    """
    for pattern in (_VERDICT_RE, _BRACKET_RE):
        hits = pattern.findall(text)
        if hits:
            return _word(hits[-1])
    hits = _SCORE_RE.findall(text)
    if hits:
        value, scale = hits[-1]
        v = float(value)
        top = float(scale) if scale else (1.0 if v <= 1.0 else 10.0)
        if top > 0:
            return v / top >= score_threshold
    m = _LEAD_RE.match(text)
    if m:
        return _word(m.group(1))
    return None


def _word(word: str) -> bool:
    return " ".join(word.lower().split()) in _POS


def passes(rate: float | None) -> bool:
    """The judge's verdict on a pass rate: a majority of the parsed verdicts said yes (SPaR's rule)."""
    return rate is not None and rate > 0.5


@dataclass(frozen=True)
class JudgeResult:
    passed: int  # verdicts "correct"
    parsed: int  # verdicts with a readable conclusion
    total: int  # verdicts sampled

    @property
    def rate(self) -> float | None:
        return self.passed / self.parsed if self.parsed else None


def judge_prompt(policy: Policy, problem: Problem, steps: Sequence[str], candidate: str, *,
                 template: str = STEP_TEMPLATE) -> str:
    numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) or "(none)"
    content = template.format(question=problem.question, steps=numbered, candidate=candidate)
    return policy.chat_prompt([{"role": "user", "content": content}])


def tally(verdicts: Sequence[bool | None]) -> JudgeResult:
    parsed = [v for v in verdicts if v is not None]
    return JudgeResult(sum(parsed), len(parsed), len(verdicts))


async def judge(policy: Policy, items: Sequence[tuple[Problem, Sequence[str], str]], *, k: int = 4,
                sampling: Sampling | None = None, template: str = STEP_TEMPLATE) -> list[JudgeResult]:
    """``k`` verdicts for each (problem, steps so far, candidate), all in one request."""
    if not items:
        return []
    params = (sampling or Sampling(temperature=0.7, max_tokens=192)).with_(n=k, stop=())
    prompts = [judge_prompt(policy, p, s, c, template=template) for p, s, c in items]
    outs = await policy.generate(prompts, params)
    return [tally([parse_verdict(c.text) for c in cs]) for cs in outs]


async def judge_nodes(tree: Tree, problem: Problem, nodes: Sequence[int], policy: Policy, *, k: int = 4,
                      sampling: Sampling | None = None, template: str = STEP_TEMPLATE) -> list[float | None]:
    """Judge each node's step given its prefix; record ``scores["judge"]`` (and the counts in ``info``)."""
    items = [(problem, tree.steps(tree.parent[n]), tree.text[n]) for n in nodes]
    results = await judge(policy, items, k=k, sampling=sampling, template=template)
    for n, r in zip(nodes, results):
        tree.info[n]["judge"] = {"passed": r.passed, "parsed": r.parsed, "total": r.total}
        if r.rate is not None:
            tree.scores[n][SCORE_KEY] = r.rate
    return [r.rate for r in results]


@dataclass
class LLMJudge:
    """An ``OutcomeVerifier`` from a judge: the pass rate of ``k`` verdicts on the whole response."""

    policy: Policy
    k: int = 4
    sampling: Sampling | None = None
    template: str = RESPONSE_TEMPLATE

    async def __call__(self, problem: Problem, response: str) -> float | None:
        [r] = await judge(self.policy, [(problem, (), response)], k=self.k, sampling=self.sampling,
                          template=self.template)
        return r.rate
