"""CHAMP (Concept and Hint-Augmented Math Problems, Mao et al. 2024): 270 competition problems.

The PyPI package ``champ-dataset`` ships the data as ``champ_dataset/dataset_files/v0.json``:
``{"problems": {id: {...}}, "concepts": {...}, "hints": {...}}``. Each problem has ``identifier``,
``_text`` (the statement), ``category``, ``solution.steps`` (each with ``_text``) and ``_answer``; the
``_raw_*`` twins mark math with ``@@``. The file is found with ``importlib.util.find_spec`` and read as
JSON: the package itself is never imported (importing it needs ``natsort``). A file of the same layout
can be given as ``path`` instead.

Problem id = ``identifier``, prompt = ``_text``, answer = ``_answer`` (as published: some answers are
prose, see ``treepref.verifiers.math.reference_forms``), meta = ``category`` and ``steps`` (the texts of
the solution's steps).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from treepref.problems import Problem, ProblemError, _answer_text

PACKAGE = "champ_dataset"
DATA_FILE = ("dataset_files", "v0.json")
INSTALL_HINT = "pip install champ-dataset (or pip install 'treepref[champ]')"


class ChampNotFound(ModuleNotFoundError, ValueError):
    """Neither the champ-dataset package nor a ``path`` to CHAMP's JSON is there (a ValueError too, so the
    CLI reports it in one line like other problem-source mistakes)."""


def champ_data_file() -> Path:
    """Where the installed champ-dataset package keeps ``v0.json``, found without importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder).joinpath(*DATA_FILE)
        if candidate.is_file():
            return candidate
    if folders:
        raise ChampNotFound(f"the {PACKAGE} package has no {'/'.join(DATA_FILE)} (in {folders[0]}): "
                            f"reinstall it ({INSTALL_HINT}) or give problems.path to CHAMP's v0.json")
    raise ChampNotFound(f"problems source 'champ' needs the champ-dataset package ({INSTALL_HINT}) "
                        "or `path` to a CHAMP JSON file (v0.json)")


def _key_lines(text: str, keys: list[str]) -> dict[str, int]:
    """The 1-based line of each problem's key in the file (where an error about it points), best effort:
    keys are looked for in order after ``"problems"``, in one pass; line 1 when a key is not found."""
    lines: dict[str, int] = {}
    cursor = max(text.find('"problems"'), 0)
    line = text.count("\n", 0, cursor) + 1
    for key in keys:
        pos = -1
        for token in (json.dumps(key, ensure_ascii=False), json.dumps(key)):
            pos = text.find(token + ":", cursor)
            if pos < 0:
                pos = text.find(token + " :", cursor)
            if pos >= 0:
                break
        if pos < 0:
            lines[key] = 1
            continue
        line += text.count("\n", cursor, pos)
        cursor = pos
        lines[key] = line
    return lines


def _steps(solution: Any, err) -> list[str]:
    """The texts of a solution's steps; a missing solution has none, a malformed one is reported."""
    if solution is None:
        return []
    if not isinstance(solution, dict):
        err("solution", f"expected an object with 'steps', got {type(solution).__name__}")
        return []
    steps = solution.get("steps", [])
    if not isinstance(steps, list):
        err("solution.steps", f"expected a list of steps, got {type(steps).__name__}")
        return []
    texts = []
    for i, step in enumerate(steps):
        text = step.get("_text") if isinstance(step, dict) else None
        if not isinstance(step, dict):
            err(f"solution.steps[{i}]", f"expected an object with '_text', got {type(step).__name__}")
        elif not isinstance(text, str):
            err(f"solution.steps[{i}]._text",
                "missing step text" if text is None else f"expected a string, got {type(text).__name__}")
        else:
            texts.append(text)
    return texts


def _problem(key: str, entry: Any, file: str, line: int, seen: dict[str, int]) -> Problem | list[ProblemError]:
    errors: list[ProblemError] = []
    where = f"problems.{key}"

    def err(fld: str | None, why: str) -> None:
        errors.append(ProblemError(file, line, f"{where}.{fld}" if fld else where, why))

    if not isinstance(entry, dict):
        err(None, f"expected a problem object, got {type(entry).__name__}")
        return errors
    pid = entry.get("identifier", key)
    if not isinstance(pid, str) or not pid.strip():
        err("identifier", "empty id" if isinstance(pid, str) else f"expected a string, got {type(pid).__name__}")
    elif pid in seen:
        err("identifier", f"duplicate id {pid!r} (first at line {seen[pid]})")
    prompt = entry.get("_text")
    if not isinstance(prompt, str):
        err("_text", "missing problem text" if prompt is None else f"expected a string, got {type(prompt).__name__}")
    elif not prompt.strip():
        err("_text", "empty problem text")
    answer, why = _answer_text(entry.get("_answer"))
    if why:
        err("_answer", why)
    elif answer is None or not answer.strip():
        err("_answer", "missing answer" if answer is None else "empty answer")
    category = entry.get("category")
    if category is not None and not isinstance(category, str):
        err("category", f"expected a string, got {type(category).__name__}")
    steps = _steps(entry.get("solution"), err)
    if errors:
        return errors
    seen[pid] = line
    return Problem(id=pid, prompt=prompt, answer=answer, meta={"category": category, "steps": steps})


def load_champ(path: str | Path | None = None) -> tuple[list[Problem], list[ProblemError]]:
    """CHAMP's problems from ``path`` (a JSON file in the package's layout) or, without one, from the
    installed champ-dataset package.

    Returns ``(problems, errors)`` in the file's order. A malformed problem becomes
    :class:`ProblemError`\\ s (file, line of the problem's key, field as ``problems.<id>.<field>``, reason)
    and the others still load; a file that is not JSON or has no ``problems`` object is one error.
    Raises :class:`ChampNotFound` when there is neither ``path`` nor the package, and
    ``FileNotFoundError`` for a ``path`` that is not a file.
    """
    if path is None:
        file = champ_data_file()
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"CHAMP file not found: {file}")
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as e:
        return [], [ProblemError(name, 1, None, f"not UTF-8 text ({e.reason} at byte {e.start})")]
    except json.JSONDecodeError as e:
        return [], [ProblemError(name, e.lineno, None, f"bad JSON: {e.msg} at column {e.colno}")]
    problems_by_key = data.get("problems") if isinstance(data, dict) else None
    if not isinstance(problems_by_key, dict):
        why = ("expected an object of problems by id" if isinstance(data, dict)
               else f"expected a JSON object with 'problems', got {type(data).__name__}")
        return [], [ProblemError(name, 1, "problems", why)]
    lines = _key_lines(text, list(problems_by_key))
    problems: list[Problem] = []
    errors: list[ProblemError] = []
    seen: dict[str, int] = {}
    for key, entry in problems_by_key.items():
        out = _problem(key, entry, name, lines[key], seen)
        (problems.append if isinstance(out, Problem) else errors.extend)(out)
    return problems, errors
