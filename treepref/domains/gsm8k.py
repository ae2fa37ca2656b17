"""GSM8K from local files: the published JSONL (rows with ``question`` and ``answer``), or a folder of
GSM8K-style TOML files, one problem each (``question`` and ``answer``), as template sets publish them.

No package ships GSM8K offline, so users bring the files. The reference answer is the text after the last
``#### `` with thousands commas removed; the worked solution is kept in ``meta["solution"]``.
"""

from __future__ import annotations

import datetime as _dt
import re
import tomllib
from pathlib import Path
from typing import Any

from treepref.problems import Problem, ProblemError, collect, read_rows, row_to_problem


def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer of a GSM8K solution: the text after the last ``####``, commas removed."""
    if "####" not in solution:
        return None
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "").rstrip(".").strip()
    return answer or None


def load_gsm8k(path: str | Path) -> tuple[list[Problem], list[ProblemError]]:
    """Problems from a GSM8K JSONL file, or from a folder of TOML files (see :func:`load_gsm8k_toml`),
    with every malformed row or file reported (file, line, field, reason).

    JSONL ids are the row's ``id`` when present, else ``"{file stem}-{line}"``.
    """
    path = Path(path)
    if path.is_dir():
        return load_gsm8k_toml(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}")

    def check(row: dict, line: int):
        """The final answer after "####"; a row with a bad one is still checked for other faults."""
        solution = row.get("answer")
        final, bad = None, []
        if not isinstance(solution, str):
            why = "missing answer" if solution is None else f"expected a string, got {type(solution).__name__}"
            bad.append(ProblemError(str(path), line, "answer", why))
        elif (final := gsm8k_final_answer(solution)) is None:
            bad.append(ProblemError(str(path), line, "answer", "no '#### <final answer>' in the solution"))
        fields = {k: v for k, v in row.items() if k != "answer"}
        return {**fields, "answer": final, "meta": {"solution": solution}}, bad, {}

    return collect(read_rows(path), str(path), check, prompt_field="question")


def _jsonable(value: Any) -> Any:
    """A TOML value as JSON can hold it (meta is saved with the trees): dates and times become ISO text."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _key_line(text: str, key: str) -> int:
    """The 1-based line where ``key = ...`` is set in a TOML text (1 when it is not there)."""
    k = re.escape(key)
    m = re.search(rf"^[ \t]*(?:{k}|\"{k}\"|'{k}')[ \t]*=", text, re.MULTILINE)
    return text.count("\n", 0, m.start()) + 1 if m else 1


def load_gsm8k_toml(folder: str | Path) -> tuple[list[Problem], list[ProblemError]]:
    """Problems from a folder of GSM8K-style TOML files (``*.toml`` below ``folder``, sorted), one problem
    each: ``question`` (the prompt) and ``answer`` (the worked solution ending in ``#### N``).

    The id is the file's path below ``folder`` without ``.toml`` (its stem, in a flat folder); other keys
    go to ``meta`` (a key ``id`` as ``meta["source_id"]``). A file that is not TOML, or has a missing or
    mistyped ``question``/``answer`` or no ``####``, is a :class:`ProblemError` naming the file, the line
    and the field; the other files still load. A folder without TOML files raises ``FileNotFoundError``.
    """
    folder = Path(folder)
    files = sorted(folder.rglob("*.toml"))
    if not files:
        raise FileNotFoundError(f"no GSM8K .toml files under {folder}")
    problems: list[Problem] = []
    errors: list[ProblemError] = []
    seen: dict[str, int] = {}
    for file in files:
        name = str(file)
        try:
            text = file.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except UnicodeDecodeError as e:
            errors.append(ProblemError(name, 1, None, f"not UTF-8 text ({e.reason} at byte {e.start})"))
            continue
        except tomllib.TOMLDecodeError as e:
            where = re.search(r"\(at line (\d+)", str(e))
            errors.append(ProblemError(name, int(where.group(1)) if where else 1, None, f"bad TOML: {e}"))
            continue
        pid = file.relative_to(folder).with_suffix("").as_posix()
        solution = data.get("answer")
        final, bad = None, []
        if not isinstance(solution, str):
            why = "missing answer" if solution is None else f"expected a string, got {type(solution).__name__}"
            bad.append(ProblemError(name, _key_line(text, "answer"), "answer", why))
        elif (final := gsm8k_final_answer(solution)) is None:
            bad.append(ProblemError(name, _key_line(text, "answer"), "answer",
                                    "no '#### <final answer>' in the solution"))
        meta = {k: _jsonable(v) for k, v in data.items() if k not in ("question", "answer", "id")}
        if "id" in data:
            meta["source_id"] = _jsonable(data["id"])
        row = {"id": pid, "question": data.get("question"), "answer": final,
               "meta": {**meta, "solution": solution}}
        out = row_to_problem(row, file=name, line=1, seen=dict(seen) if bad else seen, prompt_field="question")
        if isinstance(out, Problem) and not bad:
            problems.append(out)
            continue
        errors.extend(bad)
        if not isinstance(out, Problem):  # point at the line that sets the field
            errors.extend(ProblemError(e.file, _key_line(text, e.field) if e.field else e.line, e.field, e.reason)
                          for e in out)
    return problems, errors
