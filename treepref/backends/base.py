"""What every generation backend takes and returns, and the batching they share.

Many searches await the policy at once. A backend is only fast when it sees their requests together, so
``Coalescer`` gathers the requests that arrive within one event-loop tick (plus a short optional window)
and hands them to the backend as one batch; each caller still awaits its own result, or its own error: one
bad request (a prompt too long, a backend error) must not fail the searches whose requests it was batched with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Protocol, Sequence, Union, runtime_checkable

# A prompt is text (tokenised by the backend) or token ids (sent as they are, nothing added). Searches send
# token ids, so a child's prompt is exactly its parent's ids plus the ids the policy generated: re-tokenising
# joined text changes the boundary (SmolLM2 writes "\n\n" as two tokens, but encodes a text ending in it as one).
Prompt = Union[str, Sequence[int]]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request; every prompt of the request gets ``n`` completions."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()  # stop strings; a matched stop string is kept at the end of the text
    seed: int | None = None
    logprobs: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Sampling.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"Sampling.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"Sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))

    def with_(self, **changes) -> Sampling:
        return replace(self, **changes)


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt."""

    text: str  # includes the matched stop string, if any
    token_ids: tuple[int, ...]  # as sampled, without a final end-of-sequence id
    logprob: float  # sum of the generated tokens' log-probs under the policy (temperature 1)
    finish_reason: str  # "stop" (stop string or end of sequence) | "length"
    stop_reason: str | None = None  # the stop string that ended it; None for EOS or length
    token_logprobs: tuple[float, ...] = ()  # per-token log-probs aligned with token_ids; () when unknown

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class Policy(Protocol):
    """A text generator. Many coroutines call ``generate`` at once; the backend batches them."""

    async def generate(self, prompts: Sequence[Prompt], params: Sampling) -> list[list[Completion]]:
        """``n`` completions for each prompt (text or token ids), in prompt order."""
        ...

    def chat_prompt(self, messages: list[dict]) -> str:
        """The text the model continues for these chat messages (its chat template, generation prompt on)."""
        ...

    def encode(self, text: str) -> list[int]:
        """The token ids a text prompt becomes (exactly what ``generate`` would send for that text)."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of generated token ids (special tokens kept, no clean-up of spaces)."""
        ...

    def count_tokens(self, text: str) -> int:
        ...


@dataclass
class GenerationStats:
    """Counters every backend keeps, for run summaries and benchmarks."""

    requests: int = 0
    prompts: int = 0
    completions: int = 0
    generated_tokens: int = 0
    batches: int = 0
    log: list | None = None  # when a list, every request (prompts, params) is appended: for replays

    def record(self, prompts: Sequence[Prompt], params: Sampling, results: list[list[Completion]]) -> None:
        self.requests += 1
        self.prompts += len(prompts)
        self.completions += sum(len(r) for r in results)
        self.generated_tokens += sum(c.n_tokens for r in results for c in r)
        if self.log is not None:
            self.log.append((list(prompts), params))


def without_eos(token_ids: Sequence[int], token_logprobs: Sequence[float], eos_ids) -> tuple[tuple, tuple]:
    """Drop a final end-of-sequence id (and its log-prob): ``Completion.token_ids`` never hold it, on any
    backend, so a step's ids are its text (vLLM returns the EOS id of a sequence that ended on it)."""
    ids, lps = tuple(token_ids), tuple(token_logprobs)
    if ids and ids[-1] in eos_ids:
        return ids[:-1], lps[:-1] if len(lps) == len(ids) else lps
    return ids, lps


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """Cut ``text`` just after the earliest stop string; return the text and the stop that matched."""
    best, which = None, None
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best, which = i, s
    if best is None:
        return text, None
    return text[: best + len(which)], which


class ContextLengthError(ValueError):
    """A prompt leaves no room in the model's context. Retrying cannot help, so the runner does not."""

    retryable = False

    def __init__(self, message: str, n_tokens: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.n_tokens = n_tokens
        self.limit = limit


def check_fits(prompt_len: int, limit: int | None) -> None:
    """Raise ``ContextLengthError`` when a prompt of ``prompt_len`` tokens leaves no room for one generated
    token (vLLM's rule: a prompt of ``max_model_len`` tokens or more is refused)."""
    if limit is not None and prompt_len >= limit:
        raise ContextLengthError(f"a prompt of {prompt_len} tokens does not fit the model's context of {limit} "
                                 "tokens", prompt_len, limit)


@dataclass
class _Pending:
    prompts: list[Prompt]
    params: Sampling
    future: asyncio.Future = field(repr=False)


# For each request: its completions per prompt, or the exception that request alone failed with.
BatchFn = Callable[[list[tuple[list[Prompt], Sampling]]], Awaitable[list[Union[list[list[Completion]], BaseException]]]]


class Coalescer:
    """Merge concurrent ``generate`` calls into batches for a backend.

    ``run_batch`` receives a list of (prompts, params) requests and returns, for each, the completions per
    prompt, or an exception, which fails that request alone. Requests are gathered until the event loop has
    nothing else ready (one tick) or ``window_s`` passes, capped at ``max_prompts`` prompts per batch. With
    ``serial=True`` one batch runs at a time (for backends like transformers that use the whole machine per
    call); requests arriving meanwhile wait and form the next batch.

    When ``run_batch`` raises on a batch of several requests, each request is run again on its own, so only
    the one that caused the error fails: its neighbours pay one more call, which is rare, instead of their
    whole search.
    """

    def __init__(self, run_batch: BatchFn, *, max_prompts: int = 256, window_s: float = 0.0,
                 serial: bool = True) -> None:
        self._run_batch = run_batch
        self.max_prompts = max_prompts
        self.window_s = window_s
        self.serial = serial
        self._queue: list[_Pending] = []
        self._worker: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None

    async def submit(self, prompts: Sequence[Prompt], params: Sampling) -> list[list[Completion]]:
        if not prompts:
            return []
        loop = asyncio.get_running_loop()
        pending = _Pending(list(prompts), params, loop.create_future())
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        while self._queue:
            # Let every coroutine that is ready add its request before we cut a batch.
            await asyncio.sleep(0)
            await asyncio.sleep(self.window_s)
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0].prompts) <= self.max_prompts):
                item = self._queue.pop(0)
                batch.append(item)
                size += len(item.prompts)
            if self.serial:
                async with self._lock:
                    await self._run(batch)
            else:
                asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            results = await self._run_batch([(p.prompts, p.params) for p in batch])
        except Exception as exc:
            if len(batch) > 1:  # which request failed? each alone: only that one fails
                alive = [p for p in batch if not p.future.done()]
                if self.serial:
                    for p in alive:
                        await self._run([p])
                else:
                    await asyncio.gather(*(self._run([p]) for p in alive))
                return
            _settle(batch[0], exc)
            return
        except BaseException as exc:  # cancelled, interrupted: every caller learns of it
            for p in batch:
                _settle(p, exc)
            raise
        for p, r in zip(batch, results):
            _settle(p, r)


def _settle(pending: _Pending, outcome) -> None:
    """Hand a caller its result, or its exception."""
    if pending.future.done():  # the caller gave up (cancelled, timed out)
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
