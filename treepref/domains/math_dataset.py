"""MATH (Hendrycks et al.) from local files: the published folder of one JSON file per problem, or JSONL.

Each problem has ``problem``, ``level``, ``type`` and ``solution``; the reference answer is the content of
the solution's last ``\\boxed{...}``. Level, type and solution go to ``meta`` so runs can be sliced by them.
"""

from __future__ import annotations

import json
from pathlib import Path

from treepref.problems import Problem, ProblemError, read_rows, row_to_problem
from treepref.verifiers.math import extract_boxed


def _row(row: dict, file: str, line: int, seen: dict[str, int], default_id: str | None
         ) -> Problem | list[ProblemError]:
    solution = row.get("solution")
    answer, bad = None, []
    if not isinstance(solution, str):
        why = "missing solution" if solution is None else f"expected a string, got {type(solution).__name__}"
        bad.append(ProblemError(file, line, "solution", why))
    elif not (answer := extract_boxed(solution)):
        bad.append(ProblemError(file, line, "solution", "no \\boxed{...} final answer in the solution"))
    meta = {"level": row.get("level"), "type": row.get("type"), "solution": solution}
    fields = {k: v for k, v in row.items() if k not in ("solution", "level", "type", "answer")}
    # A row with a bad solution is still checked for other faults, but must not claim its id.
    out = row_to_problem({**fields, "answer": answer, "meta": meta}, file=file, line=line,
                         seen=dict(seen) if bad else seen, prompt_field="problem", default_id=default_id)
    if isinstance(out, Problem) and not bad:
        return out
    return bad + ([] if isinstance(out, Problem) else out)


def load_math(path: str | Path) -> tuple[list[Problem], list[ProblemError]]:
    """Problems from a MATH folder tree (``*.json``, one problem each, read in sorted order) or a JSONL file.

    Folder ids are the file's path below ``path`` without suffix (``algebra/12``); JSONL ids are the row's
    ``id`` or ``"{file stem}-{line}"``. Malformed files/rows are reported, never fatal.
    """
    path = Path(path)
    problems: list[Problem] = []
    errors: list[ProblemError] = []
    seen: dict[str, int] = {}

    def add(out: Problem | list[ProblemError]) -> None:
        (problems.append if isinstance(out, Problem) else errors.extend)(out)

    if path.is_dir():
        for file in sorted(path.rglob("*.json")):
            try:
                row = json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                errors.append(ProblemError(str(file), getattr(e, "lineno", 1), None, f"bad JSON: {e}"))
                continue
            if not isinstance(row, dict):
                errors.append(ProblemError(str(file), 1, None, "not a JSON object"))
                continue
            add(_row(row, str(file), 1, seen, file.relative_to(path).with_suffix("").as_posix()))
        return problems, errors
    if not path.is_file():
        raise FileNotFoundError(f"MATH path not found: {path}")
    for line, row in read_rows(path):
        if isinstance(row, ProblemError):
            errors.append(row)
        else:
            add(_row(row, str(path), line, seen, None))
    return problems, errors
