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
from typing import Any, Callable, Sequence

from treepref.problems import Problem
from treepref.tokens import Tokenizer, step_ids


class TrainDataError(ValueError):
    """The training data is not what the method reads; the message names the file, row and field."""


@dataclass(frozen=True)
class Need:
    formats: tuple[str, ...]  # exports that carry these columns (the first is the default of a run folder)
    columns: tuple[str, ...]
    any_of: tuple[str, ...] = ()  # at least one of these
    value: str | None = None  # the export's ``--value`` that writes these columns, where not the default


NEEDS: dict[str, Need] = {
    "dpo": Need(("step_pairs", "step_dpo", "step_apo", "trajectory_pairs"),
                ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_final", "rejected_final")),
    "step_apo": Need(("step_apo",), ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_final", "rejected_final",
                                     "q_chosen", "q_rejected")),
    "tpo": Need(("ranked_lists",), ("prompt_ids", "responses_ids", "scores", "responses_final")),
    "verifier": Need(("step_pairs", "step_apo", "step_dpo", "trajectory_pairs"),
                     ("prompt_ids", "chosen_ids", "rejected_ids")),
    "prm": Need(("stepwise",), ("prompt_ids", "completions_ids"), any_of=("labels", "soft_labels")),
    "pav": Need(("stepwise",), ("prompt_ids", "completions_ids", "advantages"), value="advantage"),
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
    """A PRM or PAV row: the ids of prompt and steps, where each labelled step's target is read (its last
    token), the targets (a PRM's labels, a PAV's advantages)."""

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
                                 f"{extract_command(method, path.parent.parent, fmt)}")
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


def extract_command(method: str, run: str | Path = "RUN", fmt: str | None = None) -> str:
    """The ``treepref extract`` command that writes ``method``'s columns for the run folder ``run``."""
    need = NEEDS[method]
    value = f" --value {need.value}" if need.value else ""
    return f"`treepref extract {run} -f {fmt or need.formats[0]}{value}`"


def check_columns(loaded: Loaded, method: str) -> None:
    need = NEEDS[method]
    formats = " / ".join(need.formats)
    hint = f"method {method} reads the {formats} export ({extract_command(method)})"
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
    question_ids: Callable[[str], list[int]] | None = None  # input: question (tokens.question_ids)
    retokenized: int = 0
    too_long: int = 0
    skipped_steps: int = 0  # pav: steps without an advantage (None), left out of the loss
    unlabelled: int = 0  # pav: rows with no step left, dropped

    def build(self, rows: Sequence[dict]) -> list:
        make = {"dpo": self._pair, "step_apo": self._pair, "verifier": self._pair, "tpo": self._list,
                "prm": self._steps, "pav": self._steps}[self.method]
        out = []
        for i, row in enumerate(rows, 1):
            ex = make(row, i)
            if ex is not None:
                out.append(ex)
        return out

    # one row --------------------------------------------------------------------------------------
    def _pair(self, row: dict, i: int) -> PairExample | None:
        # a verifier with input: question reads its own short prompt, the question, then the prefix steps
        prompt = (self._question_then_prefix(row, i) if self.question_ids is not None
                  else self._ids(row, i, "prompt_ids", "prompt", prompt=True))
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
        """Prompt and step ids as exported, a target at each step's last token; a PAV's step whose advantage is
        None is skipped (counted), and the ids end at the last labelled step (nothing after it is read)."""
        prompt, steps = row.get("prompt_ids"), row.get("completions_ids")
        if not _token_ids(prompt):
            raise self._error(i, "prompt_ids", "must be a non-empty list of token ids (a tree without token ids: "
                              "regenerate the run)")
        if not isinstance(steps, list) or not steps or not all(map(_token_ids, steps)):
            raise self._error(i, "completions_ids", "must be one non-empty list of token ids per step (a tree "
                              "without token ids: regenerate the run)")
        column = self._target_column()
        if column not in row or row[column] is None:
            reader = "method pav" if self.method == "pav" else f"labels={self.labels!r}"
            raise self._error(i, column, f"missing ({reader} reads it)")
        targets = row[column]
        if not isinstance(targets, list) or len(targets) != len(steps):
            got = len(targets) if isinstance(targets, list) else repr(targets)
            raise self._error(i, column, f"must hold one value per step ({len(steps)}), got {got}")
        if self.question_ids is not None:  # the scorer's own short prompt instead of the policy's
            question = row.get("prompt")
            if not isinstance(question, (str, list)) or not question:
                raise self._error(i, "prompt", "input: question reads the problem's prompt here; it is missing")
            prompt = self.question_ids(Problem(id="", prompt=question).question)
        ids, positions, kept = list(prompt), [], []
        for k, (s, y) in enumerate(zip(steps, targets), 1):
            ids += list(s)
            y = self._target(y, i, column, k)
            if y is None:
                self.skipped_steps += 1
                continue
            positions.append(len(ids) - 1)
            kept.append(y)
        if not kept:
            self.unlabelled += 1
            return None
        ids = ids[:positions[-1] + 1]
        return StepExample(ids, positions, kept) if self._fits(len(ids)) else None

    def _question_then_prefix(self, row: dict, i: int) -> list[int]:
        question, prefix = row.get("question"), row.get("prefix_ids")
        if not isinstance(question, str) or not question:
            raise self._error(i, "question", "input: question reads the problem's question here; it is missing")
        if not isinstance(prefix, list) or not all(map(_token_ids, prefix)):
            raise self._error(i, "prefix_ids", "input: question reads one non-empty list of token ids per prefix "
                              "step (a step_pairs or step_apo export of a tree with token ids)")
        return self.question_ids(question) + [t for step in prefix for t in step]

    def _target_column(self) -> str:
        if self.method == "pav":
            return "advantages"
        return "soft_labels" if self.labels == "soft" else "labels"

    def _target(self, y: Any, i: int, column: str, step: int) -> float | None:
        """A step's target: a PRM label in [0, 1] (a bool counts), a PAV advantage in [-1, 1] or None."""
        if y is None and self.method == "pav":
            return None
        low = -1.0 if self.method == "pav" else 0.0
        if not isinstance(y, (int, float)) or not low <= y <= 1.0:
            none = " or null" if self.method == "pav" else ""
            raise self._error(i, column, f"step {step}: must be a number in [{low:g}, 1]{none}, got {y!r}")
        return float(y)

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


def _token_ids(ids: Any) -> bool:
    return isinstance(ids, list) and bool(ids) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids)


def examples(path: str | Path, method: str, *, eos_id: int, fmt: str | None = None, **options: Any
             ) -> tuple[list, Builder]:
    """Load ``path`` for ``method`` and build its examples; the builder reports what it re-tokenised or dropped."""
    loaded = load_rows(path, method, fmt)
    builder = Builder(method, loaded.source, eos_id, **options)
    out = builder.build(loaded.rows)
    if not out:
        why = f"{builder.too_long} rows longer than max_length={builder.max_length}"
        if builder.unlabelled:
            why += f", {builder.unlabelled} with no step labelled"
        raise TrainDataError(f"{loaded.source}: no example left ({why})")
    return out, builder
