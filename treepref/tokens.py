"""Token ids at step boundaries: the one place where generated text is cut into steps.

What the policy saw is a sequence of token ids. Joining step texts and tokenising the result is not the
same sequence: SmolLM2 writes the step delimiter "\\n\\n" as two tokens, but encodes a text that *ends* in
"\\n\\n" as one token it never writes there, and on that token a right step's next step becomes junk
(../shared/SETUP-NOTES.md). So a step keeps the ids it was generated with, a multi-step completion is cut
into steps *in token space* (``split_completion``), and only text that no policy generated (a given
solution, a problem's prompt) is ever encoded (``step_ids``).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Protocol, Sequence


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Piece:
    """One step of a completion: its text (delimiter included, when it had one) and the ids that spell it."""

    text: str
    token_ids: tuple[int, ...]
    logprob: float
    last: bool  # the completion's final piece (it ended with the completion, not at a delimiter)


def split_completion(text: str, token_ids: Sequence[int], token_logprobs: Sequence[float], logprob: float,
                     delimiter: str | re.Pattern, decode) -> list[Piece]:
    """Cut a completion into steps at ``delimiter`` (a string, or a pattern whose match ends a step: code
    steps end at a newline followed by the body's indentation) without re-tokenising.

    A boundary falls after the first token whose decoded prefix reaches the end of a delimiter; a token that
    runs past the delimiter (SmolLM2 has "\\n\\n\\n") stays with the step it closes, so each piece's ids
    are exactly the ids the policy sampled, and concatenated they are the completion's ids. Pieces with no
    visible text (extra newlines) join their neighbour. ``text`` is used only when there are no ids.
    """
    ids = list(token_ids)
    if not ids:
        return [Piece(text, (), logprob, True)] if text.strip() else []
    full = decode(ids)
    lengths: dict[int, int] = {0: 0, len(ids): len(full)}

    def decoded_len(i: int) -> int:
        if i not in lengths:
            lengths[i] = len(decode(ids[:i]))
        return lengths[i]

    def next_end(pos: int) -> int:
        if isinstance(delimiter, str):
            hit = full.find(delimiter, pos)
            return -1 if hit < 0 else hit + len(delimiter)
        match = delimiter.search(full, pos)
        return -1 if match is None else max(match.end(), pos + 1)

    cuts, pos = [], 0
    while (end := next_end(pos)) >= 0:
        lo, hi = (cuts[-1] if cuts else 0) + 1, len(ids)
        while lo < hi:  # the first prefix whose text reaches ``end``
            mid = (lo + hi) // 2
            if decoded_len(mid) >= end:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(ids):
            cuts.append(lo)
        pos = max(end, decoded_len(lo))
    bounds = [0, *cuts, len(ids)]
    spans = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    merged: list[list[int]] = []
    for a, b in spans:  # a span that is only whitespace belongs to the step before it (or after, at the start)
        if merged and not full[decoded_len(a):decoded_len(b)].strip():
            merged[-1][1] = b
        elif merged and not full[decoded_len(merged[-1][0]):decoded_len(merged[-1][1])].strip():
            merged[-1][1] = b
        else:
            merged.append([a, b])
    known = len(token_logprobs) == len(ids)
    pieces = []
    for k, (a, b) in enumerate(merged):
        if known:
            lp = float(sum(token_logprobs[a:b]))
        else:  # only the total is known: share it out by length
            lp = logprob * (b - a) / len(ids) if math.isfinite(logprob) else logprob
        pieces.append(Piece(full[decoded_len(a):decoded_len(b)], tuple(ids[a:b]), lp, k == len(merged) - 1))
    return pieces


def step_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of a step given as text (not generated), followed by whatever comes next in running text.

    The step is encoded with a probe character after it and the probe's tokens dropped, so a trailing
    delimiter gets the ids it has inside running text (two "\\n" tokens for SmolLM2), the way a model
    writes it, rather than the ids of a text that ends there.
    """
    probe = "x"
    ids = tokenizer.encode(text + probe)
    for i in range(len(ids), 0, -1):
        if tokenizer.decode(ids[:i]) == text:
            return ids[:i]
    return tokenizer.encode(text)


def question_ids(tokenizer, question: str) -> list[int]:
    """A verifier's own short prompt: a Hugging Face tokenizer's chat template on the question alone (one user
    turn, no system prompt, no worked examples), generation prompt on. ``train.input: question`` trains a PRM
    or PAV on it, and the trained scorer reads it back the same way (``verifiers.trained``)."""
    out = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=True,
                                        add_generation_prompt=True)
    if not isinstance(out, list):  # newer transformers return a BatchEncoding
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


def spelled(tokenizer: Tokenizer, token_ids: Sequence[int], text: str) -> str:
    """The text ``token_ids`` spell, which is what a context holds after them. A backend reports a step's text
    cut at its stop string, but the token that completed the stop can run past it (SmolLM2's ``"\\n  "``
    after a stop at ``"\\n"``), and the ids are what the policy continues. ``text`` where the tokenizer
    cannot decode the ids (made-up ids in tests)."""
    try:
        return tokenizer.decode(list(token_ids))
    except (ValueError, KeyError, IndexError, TypeError):
        return text


class PlainTokenizer:
    """A reversible toy tokenizer for policies without one (the scripted policy in tests): a token is a word
    with the whitespace after it (leading whitespace is a token of its own), so token counts are word counts.
    Ids are a hash of the piece (stable across processes and test orders); decoding looks the pieces up."""

    _PIECE = re.compile(r"\S+\s*|\s+")

    def __init__(self) -> None:
        self._pieces: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in self._PIECE.findall(text):
            tid = 100 + zlib.crc32(piece.encode()) % 1_000_000_000
            self._pieces.setdefault(tid, piece)
            out.append(tid)
        return out

    def decode(self, token_ids: Sequence[int]) -> str:
        try:
            return "".join(self._pieces[t] for t in token_ids)
        except KeyError as exc:
            raise ValueError(f"PlainTokenizer: token id {exc.args[0]} was never encoded") from None


PLAIN = PlainTokenizer()
