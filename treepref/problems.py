"""Problem records and where they come from (files, `datasets`, built-in generators)."""

from __future__ import annotations

import gzip
import json as _json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


@dataclass(frozen=True)
class Problem:
    """One task to search on. ``prompt`` is plain text or a list of chat messages."""

    id: str
    prompt: str | list[dict]
    answer: str | None = None  # reference final answer, when the domain has one
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The user's text: the prompt itself, or the last user message."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else ""

    def messages(self, system: str | None = None, examples: list[dict] | tuple = ()) -> list[dict]:
        """The prompt as chat messages: an optional system message in front (unless the prompt has its
        own), then ``examples`` (few-shot turns, see ``treepref.few_shot``), then the problem."""
        msgs = [{"role": "user", "content": self.prompt}] if isinstance(self.prompt, str) else list(self.prompt)
        if system and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": system}] + msgs
        if examples:
            lead = 0
            while lead < len(msgs) and msgs[lead].get("role") == "system":
                lead += 1
            msgs = msgs[:lead] + list(examples) + msgs[lead:]
        return msgs


@dataclass(frozen=True)
class Shot:
    """One worked example: the user's question and the assistant's steps, in order (``treepref.few_shot``
    puts examples before a problem; they live here, beside ``Problem``, so domains can ship their own
    without importing the few-shot loader, which looks built-in sets up in ``treepref.domains``)."""

    question: str
    steps: tuple[str, ...]

    def answer_text(self, delimiter: str) -> str:
        return delimiter.join(self.steps)


# -- loading ------------------------------------------------------------------------------------------
# A problems file is user data: one bad row must never stop a long run, and every bad row must be
# findable in the file. So loaders return the good problems together with a list of errors.

@dataclass(frozen=True)
class ProblemError:
    """One malformed row: where it is (file, 1-based line or row) and what is wrong with which field."""

    file: str
    line: int
    field: str | None  # None: the whole row (bad JSON, not an object)
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class ProblemLoadError(ValueError):
    """Raised by callers that want a strict load (e.g. the CLI with no tolerance for bad rows)."""

    def __init__(self, errors: list[ProblemError]):
        self.errors = list(errors)
        shown = "\n".join(f"  {e}" for e in self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(f"{len(self.errors)} malformed problem row(s):\n{shown}{more}")


def read_rows(path: str | Path) -> Iterator[tuple[int, dict | ProblemError]]:
    """Yield ``(line, row)`` from a JSONL (or ``.jsonl.gz``), JSON (a list of objects) or parquet file.

    A row that cannot be read yields a :class:`ProblemError` in its place. JSONL lines are physical
    1-based line numbers (blank lines are skipped); parquet and JSON-array rows are 1-based row numbers.
    """
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
        return
    if suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            data = _json.loads(text)
        except ValueError:
            data = None  # maybe JSON Lines with a .json name; read it line by line below
        if isinstance(data, list):
            for i, row in enumerate(data, start=1):
                yield i, row if isinstance(row, dict) else ProblemError(name, i, None, "row is not a JSON object")
            return
        if isinstance(data, dict):
            yield 1, data
            return
    opener = gzip.open if suffix == ".gz" else open  # JSON Lines, compressed or not (HumanEval ships .jsonl.gz)
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, ProblemError(name, i, None, f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                row = _json.loads(line)
            except _json.JSONDecodeError as e:
                yield i, ProblemError(name, i, None, f"bad JSON: {e.msg} at column {e.colno}")
                continue
            yield i, row if isinstance(row, dict) else ProblemError(name, i, None, "row is not a JSON object")


def _check_prompt(value: Any) -> str | None:
    """Why ``value`` is not a usable prompt, or None when it is."""
    if isinstance(value, str):
        return "empty prompt" if not value.strip() else None
    if isinstance(value, list):
        if not value:
            return "empty prompt (no messages)"
        for m in value:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                return "chat messages must be objects with string 'role' and 'content'"
        if not any(m["content"].strip() for m in value):
            return "empty prompt (all messages empty)"
        return None
    return f"expected a string or a list of chat messages, got {type(value).__name__}"


def _answer_text(value: Any) -> tuple[str | None, str | None]:
    """(answer as text, error reason). Numbers are accepted and written as text."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, bool):
        return None, "expected a string or a number, got bool"
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        return (str(int(value)) if value.is_integer() else repr(value)), None
    return None, f"expected a string or a number, got {type(value).__name__}"


def row_to_problem(row: dict, *, file: str, line: int, seen: dict[str, int], id_field: str = "id",
                   prompt_field: str = "prompt", answer_field: str | None = "answer",
                   default_id: str | None = None) -> Problem | list[ProblemError]:
    """Validate one row and build its Problem, or return every error found in it.

    ``seen`` maps ids already loaded to their line, to report duplicates; it is updated on success.
    Fields other than id/prompt/answer go to ``meta`` (a ``meta`` object in the row is merged in).
    """
    errors: list[ProblemError] = []
    err = lambda fld, why: errors.append(ProblemError(file, line, fld, why))  # noqa: E731

    pid = row.get(id_field)
    if pid is None:
        pid = default_id if default_id is not None else f"{Path(file).stem}-{line}"
    elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
        err(id_field, f"expected a string or an integer, got {type(pid).__name__}")
    elif not str(pid).strip():
        err(id_field, "empty id")
    pid = str(pid)
    if not errors and pid in seen:
        err(id_field, f"duplicate id {pid!r} (first at line {seen[pid]})")

    prompt = row.get(prompt_field)
    if prompt_field not in row or prompt is None:
        err(prompt_field, "missing prompt")
    elif (why := _check_prompt(prompt)) is not None:
        err(prompt_field, why)

    answer = None
    if answer_field is not None:
        answer, why = _answer_text(row.get(answer_field))
        if why:
            err(answer_field, why)

    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    meta = {**{k: v for k, v in row.items() if k not in (id_field, prompt_field, answer_field, "meta")}, **meta}
    if errors:
        return errors
    seen[pid] = line
    return Problem(id=pid, prompt=prompt, answer=answer, meta=meta)


RowCheck = Callable[[dict, int], "tuple[dict, list[ProblemError], dict]"]


def collect(rows: Iterable[tuple[int, dict | ProblemError]], file: str, check: RowCheck | None = None,
            **fields: Any) -> tuple[list[Problem], list[ProblemError]]:
    """Rows (``read_rows``) as problems and errors, the one loop every loader shares.

    ``check(row, line)`` is a domain's own reading of a row: it returns the row as ``row_to_problem``
    should see it, the domain's errors for it, and per-row ``row_to_problem`` fields (e.g. which key holds
    the id). A row with errors of either kind is reported (the domain's first), not loaded, and does not
    claim its id."""
    problems: list[Problem] = []
    errors: list[ProblemError] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if isinstance(row, ProblemError):
            errors.append(row)
            continue
        bad, extra = [], {}
        if check is not None:
            row, bad, extra = check(row, line)
        out = row_to_problem(row, file=file, line=line, seen=dict(seen) if bad else seen, **fields, **extra)
        if isinstance(out, Problem) and not bad:
            problems.append(out)
        else:
            errors.extend(bad + ([] if isinstance(out, Problem) else out))
    return problems, errors


def load_problems(path: str | Path, *, id_field: str = "id", prompt_field: str = "prompt",
                  answer_field: str | None = "answer") -> tuple[list[Problem], list[ProblemError]]:
    """Load problems from a JSONL, JSON or parquet file.

    Returns ``(problems, errors)``: every malformed row (bad JSON, missing/empty/mistyped prompt, mistyped
    answer or id, duplicate id) becomes a :class:`ProblemError` naming file, line and field, and the good
    rows are still returned. A row without an id gets ``"{file stem}-{line}"``. ``answer_field=None``
    loads problems without reference answers. A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problems file not found: {path}")
    return collect(read_rows(path), str(path), id_field=id_field, prompt_field=prompt_field,
                    answer_field=answer_field)


def from_dataset(ds: Any, *, id_field: str = "id", prompt_field: str = "prompt",
                 answer_field: str | None = "answer", name: str | None = None
                 ) -> tuple[list[Problem], list[ProblemError]]:
    """Problems from a ``datasets.Dataset`` (or any iterable of dict rows), validated like a file.

    Errors name the dataset (``name``, else the dataset's own name) and the 1-based row number; a row
    without an id gets ``"{name}-{row}"``.
    """
    if name is None:
        info = getattr(ds, "info", None)
        name = getattr(info, "dataset_name", None) or "dataset"
    rows = ((i, row if isinstance(row, dict) else ProblemError(name, i, None, "row is not a mapping"))
            for i, row in enumerate(ds, start=1))
    return collect(rows, name, id_field=id_field, prompt_field=prompt_field, answer_field=answer_field)
