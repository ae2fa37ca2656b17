"""A scripted backend for whole runs without a model: it knows the built-in arithmetic problems' steps.

``TutorPolicy`` is a ``ScriptedPolicy`` whose script reads the question too: at each depth it offers the
problem's right step and a slip (the result off by one), and at the end the right answer and a wrong one, so
a search finds both successes and failures and the exports have pairs. It is built the way a registered
backend is (``TutorPolicy(model=..., **options)``), so a recipe names it with ``model.backend`` once
``tutor_backend`` (below) has registered it: a run goes through the same code as with a real model.
"""

from __future__ import annotations

import functools

from treepref.backends.scripted import EOS, ScriptedPolicy
from treepref.tokens import PLAIN

NAME = "tutor"


@functools.lru_cache(maxsize=1)
def solutions() -> dict[str, list[str]]:
    """Question -> its steps, for the built-in problems of seed 0 (the recipes' seed) at every difficulty."""
    from treepref.domains.arithmetic import generate

    return {p.prompt: p.meta["steps"] for d in (1, 2, 3) for p in generate(64, seed=0, difficulty=d)}


def slip(step: str) -> str:
    """The step with its result off by one: false arithmetic the step check catches."""
    lhs, _, rhs = step.rpartition("= ")
    return f"{lhs}= {int(rhs) + 1}"


def script(state: tuple[str, ...]) -> list[str]:
    question, steps = state[0], state[1:]
    solution = solutions().get(question)
    if not solution:
        return ["The answer is 0." + EOS]
    answer = int(solution[-1].rpartition("= ")[2])
    if len(steps) < len(solution):
        right = solution[len(steps)]
        return [right, slip(right)]
    return [f"The answer is {answer}." + EOS, f"The answer is {answer + 1}." + EOS]


class TutorPolicy(ScriptedPolicy):
    """Right steps and slips for the built-in arithmetic problems (see the module's docstring)."""

    built = 0  # how many were constructed (a finished run builds none)

    def __init__(self, model: str | None = None, **options) -> None:
        super().__init__(script)
        TutorPolicy.built += 1

    def _steps(self, prompt) -> tuple[str, ...]:
        """The question, then the steps written so far (the script needs both)."""
        text = prompt if isinstance(prompt, str) else PLAIN.decode(prompt)
        question = text.rpartition("<user>\n")[2].partition("\n<assistant>")[0]
        return (question, *super()._steps(prompt))


def register(name: str = NAME, cls: type = TutorPolicy):
    """Register ``cls`` as the backend ``name`` (``model.backend: tutor``); returns what removes it again."""
    from treepref.backends import BACKENDS

    BACKENDS.register(name, cls)
    return lambda: BACKENDS.entries.pop(name, None)
