"""Worked examples placed before the problem as earlier chat turns (few-shot prompting).

Small instruction models follow a format they have just seen far better than one they are told about:
with three worked one-operation examples (``arithmetic:1``) SmolLM2-135M gets 0.79 of one-operation
problems right instead of 0.24, and its Monte Carlo step labels agree with the exact checker on 0.95-0.99
of the checkable steps (bench/results/labels*.md). It also copies the examples' length: with a
mixed-length set it adds a spurious operation after a finished answer, so examples should be as long as
the problems (``arithmetic:<difficulty>``). Math-Shepherd and OmegaPRM sample their solutions from
few-shot prompts too.

An example is a question and its solution steps; the steps are joined with the environment's delimiter,
so the examples always show the step boundary the search splits on. The same turns must be rebuilt when
prompts are exported, which is why trees record them (``tree.meta["few_shot"]``).
"""

from __future__ import annotations

import json
from pathlib import Path

from treepref.problems import Shot


def shot_messages(shots: tuple[Shot, ...] | list[Shot], delimiter: str = "\n\n") -> list[dict]:
    """The examples as alternating user/assistant messages."""
    msgs: list[dict] = []
    for shot in shots:
        msgs += [{"role": "user", "content": shot.question},
                 {"role": "assistant", "content": shot.answer_text(delimiter)}]
    return msgs


BUILTIN = ("arithmetic", "arithmetic:<difficulty>")


def builtin_shots(name: str) -> tuple[Shot, ...] | None:
    """A built-in set by name, None if there is none: ``arithmetic`` (mixed lengths) or
    ``arithmetic:<n>`` (examples of n operations, for problems of that difficulty)."""
    from treepref.domains.arithmetic import worked_examples

    base, sep, arg = name.partition(":")
    if base != "arithmetic":
        return None
    if not sep:
        return worked_examples(None)
    if not arg.isdigit() or int(arg) < 1:
        raise FewShotError(f"few_shot {name!r}: the difficulty after 'arithmetic:' must be a positive integer")
    return worked_examples(int(arg))


class FewShotError(ValueError):
    """A few-shot example that cannot be used; the message names the file, line and field."""


def shot_from_dict(row: dict, where: str) -> Shot:
    """``{"question": str, "steps": [str, ...]}`` or ``{"question": str, "solution": str}`` (steps
    separated by a blank line)."""
    if not isinstance(row, dict):
        raise FewShotError(f"{where}: expected a mapping with 'question' and 'steps', got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise FewShotError(f"{where}: field 'question' must be a non-empty string")
    if "steps" in row:
        steps = row["steps"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
            raise FewShotError(f"{where}: field 'steps' must be a non-empty list of non-empty strings")
    elif isinstance(row.get("solution"), str) and row["solution"].strip():
        steps = [s.strip() for s in row["solution"].split("\n\n") if s.strip()]
    else:
        raise FewShotError(f"{where}: needs 'steps' (a list of strings) or 'solution' (a string)")
    return Shot(question.strip(), tuple(s.strip() for s in steps))


def load_shots(spec, source: str = "config") -> tuple[Shot, ...]:
    """Resolve ``env.few_shot``: None (no examples), a built-in name (``arithmetic``), the path of a JSONL
    file with one example per line, or an inline list of examples."""
    if spec is None or spec == [] or spec == "":
        return ()
    if isinstance(spec, list):
        return tuple(shot_from_dict(row, f"{source}: env.few_shot[{i}]") for i, row in enumerate(spec))
    if not isinstance(spec, str):
        raise FewShotError(f"{source}: env.few_shot must be null, a built-in name, a file or a list")
    try:
        builtin = builtin_shots(spec)
    except FewShotError as exc:
        raise FewShotError(f"{source}: {exc}") from None
    if builtin is not None:
        return builtin
    path = Path(spec)
    if not path.is_file():
        raise FewShotError(f"{source}: env.few_shot {spec!r} is neither a built-in set {list(BUILTIN)} "
                           "nor an existing JSONL file")
    shots = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FewShotError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from None
            shots.append(shot_from_dict(row, f"{path}:{line_no}"))
    if not shots:
        raise FewShotError(f"{path}: no examples in the file")
    return tuple(shots)


def shots_to_json(shots: tuple[Shot, ...]) -> list[dict]:
    return [{"question": s.question, "steps": list(s.steps)} for s in shots]
