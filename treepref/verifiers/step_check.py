"""Exact step checks: a step whose stated arithmetic is false ends its episode as a failure.

An outcome verifier reads only the final answer, so a path that writes ``12 + 5 = 16`` and still ends on
the right number (a small model copies answers and slips in the middle) counts as solved, every step on it
gains value, and pairs taken under it teach a wrong step. A step check closes that hole where a domain can
check what a step states: ``check(problem, step_text, prefix) -> bool | None``, ``prefix`` being the steps
before it (False: the step states something false; None: nothing to check). The built-in ones know nothing
of the reference solution: a true step off the intended route passes. ``env.step_check`` names one
(``arithmetic``: every equation holds; ``arithmetic_grounded``: and computes only with numbers the problem
or an earlier step states; ``arithmetic_derived``: and the final answer is the result of a derivation that uses
every number the problem states; ``arithmetic_counted``: and no equation uses a number more often than the
problem and the earlier steps have it; or ``module:function``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

from treepref.problems import Problem
from treepref.registry import Registry, where

StepCheck = Callable[[Problem, str, Sequence[str]], "bool | None"]

# Short names for the checks treepref ships; a name not here may be given in place as ``module:function``.
STEP_CHECKS = Registry("step check", {
    "arithmetic": "treepref.domains.arithmetic:check_step",
    "arithmetic_grounded": "treepref.domains.arithmetic:grounded_step",
    "arithmetic_derived": "treepref.domains.arithmetic:derived_step",
    "arithmetic_counted": "treepref.domains.arithmetic:counted_step",
}, inline=True)
BUILTIN = STEP_CHECKS  # the name it had


def load_step_check(name: str, *, source: str | None = None, key: str | None = "step_check") -> StepCheck:
    """The check ``name`` denotes (a registered name or ``module:function``); a ValueError naming it if not."""
    check = STEP_CHECKS.get(name, source=source, key=key)
    if not callable(check):
        raise ValueError(f"{where(source, key)}step check {name!r} is not a function, got {check!r}")
    return check
