"""Process reward models on transformers: a score in (0, 1) for every step of a solution.

Two conventions cover the public PRMs:

(a) ``StepTagPRM`` — a causal LM trained to put a label token after a step tag (Math-Shepherd and its
    descendants). The input is ``question, step_1 TAG, step_2 TAG, ...``; at each TAG position the logits
    predict the label that follows, and the step's score is P(good) / (P(good) + P(bad)), i.e. the softmax
    restricted to the two label tokens (equal to sigmoid(logit_good - logit_bad)).
(b) ``TokenClassPRM`` — a token-classification head (TRL's PRMTrainer): the steps are joined with a
    separator, each step's label sits on its last token (the separator's last token), and the score is the
    softmax probability of class 1 ("correct") there.

We build the input by tokenising the pieces (question, each step, each tag/separator) separately and
concatenating the ids, so every read position is known exactly instead of searched for (a tag string can
merge with its neighbours when the whole text is tokenised at once). Batches are right-padded, so the
positions of a row do not depend on the other rows. Scoring runs in a worker thread (``asyncio.to_thread``)
behind a lock, one model call at a time, since each call uses every core.

Both classes are ``StepScorer``s: ``await prm(problems, steps_per_problem) -> scores_per_problem``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Sequence

from treepref.problems import Problem


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    positions: list[int]  # where each step's score is read


def _load_dtype(dtype):
    import torch

    return getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype


class _PRMBase:
    """Shared encoding, batching and threading; subclasses say which pieces and how to read a score."""

    model = None
    tokenizer = None

    def __init__(self, *, batch_size: int = 16, max_length: int | None = None, device: str = "cpu") -> None:
        self.batch_size = max(1, batch_size)
        self.max_length = max_length
        self.device = device
        self._lock = threading.Lock()

    # -- encoding ----------------------------------------------------------------------------------
    def _tok(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _prefix(self, problem: Problem) -> list[int]:
        ids = self._tok(self.question_format.format(question=problem.question))
        bos = self.tokenizer.bos_token_id
        if self.add_bos and bos is not None:
            ids = [bos] + ids
        return ids

    def encode(self, problem: Problem, steps: Sequence[str]) -> Encoded:
        """Token ids of the question and steps, and the position each step's score is read at."""
        ids = self._prefix(problem)
        positions = []
        for step in steps:
            ids += self._tok(self.step_format.format(step=step))
            ids += self._mark_ids
            positions.append(len(ids) - 1)
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"problem {problem.id!r}: {len(ids)} tokens exceed max_length={self.max_length}")
        return Encoded(ids, positions)

    # -- scoring -----------------------------------------------------------------------------------
    async def __call__(self, problems: list[Problem], steps: list[list[str]]) -> list[list[float]]:
        if len(problems) != len(steps):
            raise ValueError(f"{len(problems)} problems but {len(steps)} step lists")
        return await asyncio.to_thread(self.score_sync, problems, steps)

    def score_sync(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        encoded = [self.encode(p, s) for p, s in zip(problems, steps)]
        out: list[list[float]] = [[] for _ in encoded]
        order = sorted((i for i, e in enumerate(encoded) if e.positions), key=lambda i: len(encoded[i].ids))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            with self._lock:
                scores = self._score_chunk([encoded[i] for i in chunk])
            for i, s in zip(chunk, scores):
                out[i] = s
        return out

    def _score_chunk(self, rows: list[Encoded]) -> list[list[float]]:
        import torch

        width = max(len(r.ids) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            input_ids[k, :len(r.ids)] = torch.tensor(r.ids)
            attention[k, :len(r.ids)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
        return [self._read(logits[k, r.positions].float()).tolist() for k, r in enumerate(rows)]


class StepTagPRM(_PRMBase):
    """Math-Shepherd-style PRM: P(good) / (P(good) + P(bad)) at each step tag.

    Defaults follow ``peiyi9979/math-shepherd-mistral-7b-prm``: ``"{question} {step_1} ки\\n{step_2} ки\\n"``
    with labels ``+`` / ``-``. Pass another ``tag`` / ``good`` / ``bad`` for other models; ``good`` and
    ``bad`` must each be one token (as the model was trained to emit).
    """

    def __init__(self, model: str | None = None, *, tag: str = " ки", good: str = "+", bad: str = "-",
                 step_format: str = " {step}", separator: str = "\n", question_format: str = "{question}",
                 add_bos: bool = True, dtype="float32", device: str = "cpu", model_obj=None, tokenizer=None,
                 batch_size: int = 16, max_length: int | None = None) -> None:
        super().__init__(batch_size=batch_size, max_length=max_length, device=device)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from treepref.models import resolve_model

        if model_obj is None:
            name = resolve_model(model)
            model_obj = AutoModelForCausalLM.from_pretrained(name, dtype=_load_dtype(dtype))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
        self.model = model_obj.to(device).eval()
        self.tokenizer = tokenizer
        self.step_format, self.question_format, self.add_bos = step_format, question_format, add_bos
        self.tag_ids = self._tok(tag)
        if not self.tag_ids:
            raise ValueError(f"step tag {tag!r} encodes to no tokens")
        self._mark_ids = self.tag_ids + self._tok(separator)
        self._sep_len = len(self._tok(separator))
        self.good_id, self.bad_id = self._single(good), self._single(bad)

    def _single(self, text: str) -> int:
        ids = self._tok(text)
        if len(ids) != 1:
            raise ValueError(f"label {text!r} must be one token, got {ids}")
        return ids[0]

    def encode(self, problem: Problem, steps: Sequence[str]) -> Encoded:
        enc = super().encode(problem, steps)
        # The score is read at the tag's last token (its logits predict the label), not after the separator.
        return Encoded(enc.ids, [p - self._sep_len for p in enc.positions])

    def _read(self, logits):
        import torch

        pair = logits[:, [self.good_id, self.bad_id]]
        return torch.softmax(pair, dim=-1)[:, 0]


class TokenClassPRM(_PRMBase):
    """TRL-PRMTrainer-style PRM: class-1 probability at the last token of each step + separator."""

    def __init__(self, model: str | None = None, *, separator: str = "\n", step_format: str = "{step}",
                 question_format: str = "{question}", add_bos: bool = True, dtype="float32",
                 device: str = "cpu", model_obj=None, tokenizer=None, batch_size: int = 16,
                 max_length: int | None = None, good_label: int = 1) -> None:
        super().__init__(batch_size=batch_size, max_length=max_length, device=device)
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        if model_obj is None:
            model_obj = AutoModelForTokenClassification.from_pretrained(model, dtype=_load_dtype(dtype))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        self.model = model_obj.to(device).eval()
        self.tokenizer = tokenizer
        # TRL tokenises ``step + separator`` as one piece (and the prompt, with BOS, alone): do the same,
        # so a separator that merges with the step's last characters gets the ids the model was trained on.
        self.step_format = step_format + separator
        self.question_format, self.add_bos = question_format, add_bos
        self._mark_ids: list[int] = []
        self.good_label = good_label

    def _read(self, logits):
        import torch

        return torch.softmax(logits, dim=-1)[:, self.good_label]
