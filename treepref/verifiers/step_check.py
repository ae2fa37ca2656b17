"""Exact step checks: a step whose stated arithmetic is false ends its episode as a failure.

An outcome verifier reads only the final answer, so a path that writes ``12 + 5 = 16`` and still ends on
the right number (a small model copies answers and slips in the middle) counts as solved, every step on it
gains value, and pairs taken under it teach a wrong step. A step check closes that hole where a domain can
check what a step states: ``check(problem, step_text, prefix) -> bool | None``, ``prefix`` being the steps
before it (False: the step states something false; None: nothing to check). The built-in ones know nothing
of the reference solution: a true step off the intended route passes. ``env.step_check`` names one
(``arithmetic``: every equation holds; ``arithmetic_grounded``: and computes only with numbers the problem
or an earlier step states; ``arithmetic_derived``: and the final answer is the result of a derivation that uses
every number the problem states; or ``module:function``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Callable

from treepref.problems import Problem

StepCheck = Callable[[Problem, str, Sequence[str]], "bool | None"]

# Short names for the checks treepref ships.
BUILTIN = {"arithmetic": "treepref.domains.arithmetic:check_step",
           "arithmetic_grounded": "treepref.domains.arithmetic:grounded_step",
           "arithmetic_derived": "treepref.domains.arithmetic:derived_step"}


def load_step_check(name: str) -> StepCheck:
    """The check ``name`` denotes (a key of ``BUILTIN`` or ``module:function``); ValueError naming it if not."""
    target = BUILTIN.get(name, name)
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"step_check {name!r}: not one of {', '.join(BUILTIN)} nor 'module:function'")
    try:
        check = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"step_check {name!r} cannot be imported ({exc})") from None
    if not callable(check):
        raise ValueError(f"step_check {name!r} is not a function")
    return check
