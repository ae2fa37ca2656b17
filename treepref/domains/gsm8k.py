"""GSM8K from a local JSONL file (rows with ``question`` and ``answer``; the final answer follows ``####``).

No package ships GSM8K offline, so users bring the published JSONL. The reference answer is the text after
the last ``#### `` with thousands commas removed; the worked solution is kept in ``meta["solution"]``.
"""

from __future__ import annotations

from pathlib import Path

from treepref.problems import Problem, ProblemError, read_rows, row_to_problem


def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer of a GSM8K solution: the text after the last ``####``, commas removed."""
    if "####" not in solution:
        return None
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "").rstrip(".").strip()
    return answer or None


def load_gsm8k(path: str | Path) -> tuple[list[Problem], list[ProblemError]]:
    """Problems from a GSM8K JSONL file, with every malformed row reported (file, line, field, reason).

    Ids are the row's ``id`` when present, else ``"{file stem}-{line}"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}")
    problems: list[Problem] = []
    errors: list[ProblemError] = []
    seen: dict[str, int] = {}
    for line, row in read_rows(path):
        if isinstance(row, ProblemError):
            errors.append(row)
            continue
        solution = row.get("answer")
        final, bad = None, []
        if not isinstance(solution, str):
            why = "missing answer" if solution is None else f"expected a string, got {type(solution).__name__}"
            bad.append(ProblemError(str(path), line, "answer", why))
        elif (final := gsm8k_final_answer(solution)) is None:
            bad.append(ProblemError(str(path), line, "answer", "no '#### <final answer>' in the solution"))
        fields = {k: v for k, v in row.items() if k != "answer"}
        # A row with a bad answer is still checked for other faults, but must not claim its id.
        out = row_to_problem({**fields, "answer": final, "meta": {"solution": solution}}, file=str(path),
                             line=line, seen=dict(seen) if bad else seen, prompt_field="question")
        if isinstance(out, Problem) and not bad:
            problems.append(out)
        else:
            errors.extend(bad + ([] if isinstance(out, Problem) else out))
    return problems, errors
