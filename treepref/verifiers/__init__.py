"""Outcome checks and step scorers: what a search or an export asks "how good is this?".

Two protocols, and everything here is one or the other:

* ``OutcomeVerifier``: ``await verifier(problem, answer) -> float | None`` — a final answer or response
  checked (``math.MathVerifier``, ``judge.LLMJudge``, ``domains.instructions.instruction_reward``); None
  when there is nothing to check against.
* ``StepScorer``: ``await scorer(problems, steps_per_problem) -> scores_per_problem`` — every step of each
  path scored in (0, 1), None where it cannot judge (``prm.StepTagPRM`` / ``prm.TokenClassPRM``,
  ``trained.TrainedPRM`` / ``TrainedVerifier``, ``domains.arithmetic.arithmetic_step_scorer``). Searches use
  them through ``search.evaluators`` (``{kind: steps, scorer: module:function}``), with ``backup``'s
  aggregators squashing a path's scores.

``step_check.load_step_check`` names a third, synchronous kind: ``check(problem, step_text, prefix) -> bool |
None``, what a step states checked, given the steps before it, as it is taken (``ReasoningEnv.step_check``).

Labelling procedures that *search* (Math-Shepherd, OmegaPRM) are searches and live in ``treepref/search``.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Sequence

from treepref.problems import Problem

OutcomeVerifier = Callable[[Problem, str], Awaitable[float | None]]
StepScorer = Callable[[Sequence[Problem], Sequence[Sequence[str]]], Awaitable[list[list[float | None]]]]

__all__ = ["OutcomeVerifier", "StepScorer"]
