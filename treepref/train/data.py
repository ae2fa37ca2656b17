"""Training examples from treepref exports: the token ids the policy generated, EOS after final sides only.

A trainer must see what the policy saw: ``prompt_ids`` followed by the step's ids as sampled, never a
re-tokenisation of ``prompt + chosen`` text (that moves the step boundary: "\\n\\n" becomes one token the model
never writes after a step). And a step in mid-solution must not end in EOS, or the model learns to stop
after one step (TRL's DPOTrainer appends EOS to every completion). So a side gets EOS exactly when the
export marks it final (``chosen_final`` / ``rejected_final`` / ``responses_final``: the step states an
answer or the policy stopped).

Inputs: a run folder (``exports/<format>/dataset`` inside it), an export folder (``dataset/``), a
``datasets.save_to_disk`` folder, a ``.jsonl`` or a ``.parquet`` file. A missing column stops before any
model loads, naming the column, the file and the export format that has it; a bad row names its file,
row and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from treepref.tokens import Tokenizer, step_ids


class TrainDataError(ValueError):
    """The training data is not what the method reads; the message names the file, row and field."""


@dataclass(frozen=True)
class Need:
    formats: tuple[str, ...]  # exports that carry these columns (the first is the default of a run folder)
    columns: tuple[str, ...]
    any_of: tuple[str, ...] = ()  # at least one of these


NEEDS: dict[str, Need] = {
    "dpo": Need(("step_pairs", "step_dpo", "step_apo", "trajectory_pairs"),
                ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_final", "rejected_final")),
    "step_apo": Need(("step_apo",), ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_final", "rejected_final",
                                     "q_chosen", "q_rejected")),
    "tpo": Need(("ranked_lists",), ("prompt_ids", "responses_ids", "scores", "responses_final")),
    "verifier": Need(("step_pairs", "step_apo", "step_dpo"), ("prompt_ids", "chosen_ids", "rejected_ids")),
    "prm": Need(("stepwise",), ("prompt_ids", "completions_ids"), any_of=("labels", "soft_labels")),
}
METHODS = tuple(NEEDS)


@dataclass
class PairExample:
    """One preference pair as token ids: ``prompt + chosen`` and ``prompt + rejected`` (EOS where final)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    weight: float = 1.0
    q_chosen: float | None = None
    q_rejected: float | None = None
    ref: tuple[float, float] | None = None  # reference log-probs of (chosen, rejected), filled before training


@dataclass
class ListExample:
    """A TPO ranked list: responses best first with their scores."""

    prompt: list[int]
    responses: list[list[int]]
    scores: list[float]
    ref: list[float] | None = None


@dataclass
class StepExample:
    """A PRM row: the ids of prompt and steps, where each step's label is read (its last token), the labels."""

    ids: list[int]
    positions: list[int]
    labels: list[float]


@dataclass
class Loaded:
    rows: list[dict]
    source: str  # the file the rows came from, for messages
    columns: set[str] = field(default_factory=set)


# -- reading ------------------------------------------------------------------------------------------
def load_rows(path: str | Path, method: str, fmt: str | None = None) -> Loaded:
    """The rows at ``path`` for ``method``, columns checked. ``fmt`` picks the export of a run folder."""
    if method not in NEEDS:
        raise TrainDataError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"{path}: no such file or folder")
    if path.is_dir() and (path / "trees").is_dir():  # a run folder
        path = path / "exports" / (fmt or NEEDS[method].formats[0])
        if not path.exists():
            raise TrainDataError(f"{path}: the run has no such export; make it with "
                                 f"`treepref extract {path.parent.parent} -f {fmt or NEEDS[method].formats[0]}`")
    if path.is_dir() and (path / "dataset").is_dir():  # an export folder
        path = path / "dataset"
    loaded = _read(path)
    check_columns(loaded, method)
    return loaded


def _read(path: Path) -> Loaded:
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to read is the user's data, said in one line
            raise TrainDataError(f"{path}: not a dataset folder ({exc})") from None
        return Loaded(ds.to_list(), str(path), set(ds.column_names))
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainDataError(f"{path}: row {i}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise TrainDataError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
            rows.append(row)
        return Loaded(rows, str(path), set().union(*map(set, rows)) if rows else set())
    if path.suffix == ".parquet":
        import datasets

        ds = datasets.Dataset.from_parquet(str(path))
        return Loaded(ds.to_list(), str(path), set(ds.column_names))
    raise TrainDataError(f"{path}: expected a run or export folder, a dataset folder, .jsonl or .parquet")


def check_columns(loaded: Loaded, method: str) -> None:
    need = NEEDS[method]
    formats = " / ".join(need.formats)
    hint = f"method {method} reads the {formats} export (`treepref extract RUN -f {need.formats[0]}`)"
    if not loaded.rows:
        raise TrainDataError(f"{loaded.source}: no rows; {hint}")
    for col in need.columns:
        if col not in loaded.columns:
            raise TrainDataError(f"{loaded.source}: no column {col!r}; {hint}")
    if need.any_of and not any(c in loaded.columns for c in need.any_of):
        raise TrainDataError(f"{loaded.source}: no column {' or '.join(map(repr, need.any_of))}; {hint}")


# -- examples -----------------------------------------------------------------------------------------
@dataclass
class Builder:
    """Turns rows into examples for one method. ``tokenizer`` encodes text only for rows without ids (trees
    from older runs), the careful way (``tokens.step_ids``), and counts them in ``retokenized``."""

    method: str
    source: str
    eos_id: int
    tokenizer: Tokenizer | None = None
    labels: str = "hard"  # prm: "hard" (labels) or "soft" (soft_labels)
    weights: str = "none"  # dpo/step_apo: "none" or "weight" (the export's weight column as a loss weight)
    max_length: int | None = None
    retokenized: int = 0
    too_long: int = 0

    def build(self, rows: Sequence[dict]) -> list:
        make = {"dpo": self._pair, "step_apo": self._pair, "verifier": self._pair, "tpo": self._list,
                "prm": self._steps}[self.method]
        out = []
        for i, row in enumerate(rows, 1):
            ex = make(row, i)
            if ex is not None:
                out.append(ex)
        return out

    # one row --------------------------------------------------------------------------------------
    def _pair(self, row: dict, i: int) -> PairExample | None:
        prompt = self._ids(row, i, "prompt_ids", "prompt", prompt=True)
        eos = self.method != "verifier"  # a verifier scores the step itself; a policy learns where to stop
        sides = []
        for side in ("chosen", "rejected"):
            ids = self._ids(row, i, f"{side}_ids", side)
            if eos and self._flag(row, i, f"{side}_final"):
                ids = ids + [self.eos_id]
            sides.append(ids)
        ex = PairExample(prompt, sides[0], sides[1])
        if self.method == "step_apo":
            ex.q_chosen, ex.q_rejected = self._float(row, i, "q_chosen"), self._float(row, i, "q_rejected")
        if self.weights == "weight":
            ex.weight = self._float(row, i, "weight")
        return ex if self._fits(len(prompt) + max(map(len, sides))) else None

    def _list(self, row: dict, i: int) -> ListExample | None:
        prompt = self._ids(row, i, "prompt_ids", "prompt", prompt=True)
        responses, finals, scores = row["responses_ids"], row["responses_final"], row["scores"]
        if not (isinstance(responses, list) and isinstance(finals, list) and isinstance(scores, list)
                and len(responses) == len(finals) == len(scores) >= 2):
            raise self._error(i, "responses_ids", "responses_ids, responses_final and scores must be lists of "
                              "one equal length ≥ 2")
        if not all(responses):
            if self.tokenizer is None or "responses" not in row:
                raise self._error(i, "responses_ids", "empty ids (trees without token ids) and no text to encode")
            self.retokenized += 1
            responses = [step_ids(self.tokenizer, "\n\n".join(r)) for r in row["responses"]]
        out = [list(r) + ([self.eos_id] if f else []) for r, f in zip(responses, finals)]
        ex = ListExample(prompt, out, [float(s) for s in scores])
        return ex if self._fits(len(prompt) + max(map(len, out))) else None

    def _steps(self, row: dict, i: int) -> StepExample | None:
        prompt = list(row["prompt_ids"])
        steps = row["completions_ids"]
        column = "soft_labels" if self.labels == "soft" else "labels"
        if column not in row or row[column] is None:
            raise self._error(i, column, f"missing (labels={self.labels!r} reads it)")
        labels = [float(x) for x in row[column]]
        if not prompt or not steps or not all(steps):
            raise self._error(i, "completions_ids", "empty ids (trees without token ids); regenerate the run")
        if len(labels) != len(steps):
            raise self._error(i, column, f"{len(labels)} labels for {len(steps)} steps")
        ids, positions = list(prompt), []
        for s in steps:
            ids += list(s)
            positions.append(len(ids) - 1)
        return StepExample(ids, positions, labels) if self._fits(len(ids)) else None

    # fields ---------------------------------------------------------------------------------------
    def _ids(self, row: dict, i: int, column: str, text_column: str, *, prompt: bool = False) -> list[int]:
        ids = row.get(column)
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise self._error(i, column, "must be a list of token ids")
        if ids:
            return list(ids)
        text = row.get(text_column)
        if self.tokenizer is None or not isinstance(text, str):
            raise self._error(i, column, "empty (trees without token ids) and no text to encode; regenerate the run")
        self.retokenized += prompt  # count a row once, at its prompt
        return list(self.tokenizer.encode(text)) if prompt else step_ids(self.tokenizer, text)

    def _flag(self, row: dict, i: int, column: str) -> bool:
        v = row.get(column)
        if not isinstance(v, bool):
            raise self._error(i, column, f"must be true or false, got {v!r}")
        return v

    def _float(self, row: dict, i: int, column: str) -> float:
        v = row.get(column)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self._error(i, column, f"must be a number, got {v!r}")
        return float(v)

    def _fits(self, n: int) -> bool:
        if self.max_length is not None and n > self.max_length:
            self.too_long += 1
            return False
        return True

    def _error(self, i: int, column: str, what: str) -> TrainDataError:
        return TrainDataError(f"{self.source}: row {i}: {column}: {what}")


def examples(path: str | Path, method: str, *, eos_id: int, fmt: str | None = None, **options: Any
             ) -> tuple[list, Builder]:
    """Load ``path`` for ``method`` and build its examples; the builder reports what it re-tokenised or dropped."""
    loaded = load_rows(path, method, fmt)
    builder = Builder(method, loaded.source, eos_id, **options)
    out = builder.build(loaded.rows)
    if not out:
        raise TrainDataError(f"{loaded.source}: no example left (all {builder.too_long} rows longer than "
                             f"max_length={builder.max_length})")
    return out, builder
