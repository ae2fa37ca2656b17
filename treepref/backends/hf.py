"""A Policy on transformers ``generate``: for CPUs, GPUs without vLLM, and as the reference backend in tests.

How a batch is made
    Concurrent ``generate`` calls are merged by a ``Coalescer`` (one event-loop tick), and the merged batch
    runs in a worker thread (``asyncio.to_thread``) so the event loop keeps collecting the next batch while
    the model runs. Every (prompt, sample) pair becomes one row; rows are sorted by ``max_tokens`` and prompt
    length and cut into chunks of at most ``max_batch_rows`` rows, one ``model.generate`` call per chunk.

Why one call can mix sampling settings
    Token choice does not use transformers' sampler. A logits processor (``_RowSampler``) picks each row's
    token itself, with that row's temperature, top_p, stop strings, token budget and random stream, and hands
    ``generate`` a one-hot score so its greedy step takes exactly that token. Requests with different
    ``Sampling`` therefore share one ``generate`` call instead of being grouped apart, and the processor sees
    the raw logits, so the log-probs come for free (no ``output_logits`` tensors kept for every step).

Contract details
    * ``text`` is the decoded generated tokens (special tokens kept, no space clean-up), cut just after the
      earliest stop string, which is kept. ``finish_reason`` is "stop" for a stop string (``stop_reason`` is
      that string) or end of sequence (``stop_reason`` None), "length" when ``max_tokens`` ran out; a stop
      string completed by the last allowed token counts as "stop".
    * A prompt is text (tokenised by ``encode``: BOS prepended only where this tokenizer adds one itself) or
      token ids, which go to the model exactly as given, so a child's prompt can be its parent's ids plus
      the ids generated for the step, whatever re-tokenising the joined text would make of the boundary.
    * ``token_ids`` are exactly the sampled tokens, up to and including the one that completed the stop
      string; the EOS token is not included (nor is its log-prob), nor padding. A sampled token may run
      past the stop string (SmolLM2 has "\\n\\n\\n" and "\\n\\n  " tokens): it is kept as sampled,
      with its own log-prob, and only ``text`` is cut, so ``decode(token_ids)`` may run a few characters
      past ``text``. (Swapping in a re-tokenised piece would hand the next step a token the model does not
      write at that boundary, e.g. "\\n\\n" as the single token 1116 where it writes 198, 198.)
    * ``token_logprobs`` are the log-probs of ``token_ids`` under the model's own distribution at
      temperature 1 (raw logits, whatever temperature/top_p sampled the token) and ``logprob`` is their
      sum; () and 0.0 with ``Sampling(logprobs=False)``.
    * Seeds are per completion: each row draws its uniforms from its own ``random.Random``. With
      ``Sampling.seed`` the stream of completion ``j`` of prompt ``i`` depends only on (seed, i, j), so the
      same request gives the same completions whatever else shares its batch (up to floating-point
      differences in the logits between batch shapes, which can flip a draw that falls on a boundary; the
      same request alone, or in the same batch, is bit-for-bit repeatable). Without a seed, rows take seeds
      from the policy's own generator (constructor ``seed``), so a run that sends the same requests in the
      same order repeats too.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from typing import Sequence

from treepref.backends.base import (Coalescer, Completion, GenerationStats, Prompt, Sampling, check_fits,
                                    truncate_at_stop)


def _row_seed(seed: int, i: int, j: int) -> str:
    # A string seed goes through SHA-512 in ``random.Random``: stable across processes and Python versions.
    return f"{int(seed)}:{i}:{j}"


@dataclass
class _Row:
    """One completion being generated: its settings, and what it has produced so far."""

    request: int
    prompt: int
    sample: int
    prompt_ids: list[int]
    params: Sampling
    rng: random.Random
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False
    finish_reason: str = "length"
    stop_reason: str | None = None
    text: str | None = None  # set when the row ends on a stop string


class HFPolicy:
    """Policy on a transformers causal LM (``Policy`` protocol, plus ``score``).

    Args:
        model: a folder or hub id; None gives the embedded SmolLM2-135M-Instruct (see ``treepref.models``).
        dtype: "bfloat16" (default; 2-6x faster than float32 on recent CPUs), "float16", "float32", "auto"
            or a ``torch.dtype``.
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
        max_batch_prompts: most prompts the coalescer merges into one batch.
        max_batch_rows: most rows (prompt x sample) in one ``model.generate`` call; bounds memory (the KV
            cache grows with rows x (prompt + generated) tokens).
        seed: seeds the stream that unseeded requests draw their row seeds from.
        num_threads: torch intra-op threads (``torch.set_num_threads``, process-wide); None leaves torch's.
        window_s: extra time the coalescer waits for more requests after one event-loop tick.
        attn_implementation: passed to ``from_pretrained`` ("sdpa", "eager", "flash_attention_2", ...).
    """

    def __init__(self, model: str | None = None, *, dtype="bfloat16", device: str | None = None,
                 max_batch_prompts: int = 64, max_batch_rows: int = 128, seed: int = 0,
                 num_threads: int | None = None, window_s: float = 0.0,
                 attn_implementation: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from treepref.models import resolve_model

        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.model_name = resolve_model(model)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        self.tokenizer.padding_side = "left"
        kwargs = {"dtype": dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForCausalLM.from_pretrained(self.model_name, **kwargs).to(self.device).eval()

        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: frozenset[int] = frozenset([eos] if isinstance(eos, int) else (eos or []))
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = min(self.eos_ids) if self.eos_ids else 0
            self.tokenizer.pad_token_id = pad
        self.pad_id = int(pad)
        # Prepend BOS to prompts only where this tokenizer adds one by itself and the prompt lacks it
        # (chat templates usually write their own).
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer("a").input_ids
        self._bos = bos if bos is not None and probe and probe[0] == bos else None

        # A prompt must be shorter than the positions the model was trained on (None: no known limit).
        self.max_context: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self.max_batch_rows = max(1, int(max_batch_rows))
        self.stats = GenerationStats()
        self.model_calls = 0  # model.generate calls (also counted in stats.batches)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # one model call at a time: each uses every core
        self._coalescer = Coalescer(self._run_batch, max_prompts=max_batch_prompts, window_s=window_s)
        self._scorer = Coalescer(self._run_score_batch, max_prompts=max_batch_prompts, window_s=window_s)
        self._closed = False

    # ----------------------------------------------------------------------------------------- text helpers
    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, text: str) -> list[int]:
        """The ids a text prompt becomes: its tokens, after BOS where this tokenizer adds one itself."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if self._bos is not None and (not ids or ids[0] != self._bos):
            ids = [self._bos] + ids
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of token ids as ``generate`` writes it: special tokens kept, no space clean-up."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError("HFPolicy needs a prompt of at least one token")
        check_fits(len(ids), self.max_context)
        return ids

    # ------------------------------------------------------------------------------------------- generation
    async def generate(self, prompts: Sequence[Prompt], params: Sampling) -> list[list[Completion]]:
        """``params.n`` completions for each prompt (text or token ids), in prompt order (see the module
        docstring)."""
        self._check_open()
        return await self._coalescer.submit(list(prompts), params)

    async def _run_batch(self, requests: list[tuple[list[Prompt], Sampling]]) -> list[list[list[Completion]]]:
        results = await asyncio.to_thread(self._generate_sync, requests)
        for (prompts, params), result in zip(requests, results):
            if not isinstance(result, BaseException):
                self.stats.record(prompts, params, result)
        return results

    def _generate_sync(self, requests: list[tuple[list[Prompt], Sampling]]) -> list:
        """Each request's completions, or the error of a request whose prompt the model cannot take (empty,
        too long): the other requests of the batch are generated."""
        rows: list[_Row] = []
        errors: dict[int, Exception] = {}
        for r, (prompts, params) in enumerate(requests):
            try:
                prompt_ids = [self._prompt_ids(prompt) for prompt in prompts]
            except ValueError as exc:
                errors[r] = exc
                continue
            for i, ids in enumerate(prompt_ids):
                for j in range(params.n):
                    seed = _row_seed(params.seed, i, j) if params.seed is not None else self._rng.getrandbits(48)
                    rows.append(_Row(r, i, j, ids, params, random.Random(seed)))
        # Rows of like budget and prompt length share a call, so little time goes to padding or waiting.
        order = sorted(rows, key=lambda row: (row.params.max_tokens, len(row.prompt_ids)))
        for start in range(0, len(order), self.max_batch_rows):
            with self._lock:
                self._check_open()
                self._generate_chunk(order[start:start + self.max_batch_rows])
        out = [[[None] * params.n for _ in prompts] for prompts, params in requests]
        for row in rows:
            out[row.request][row.prompt][row.sample] = self._completion(row)
        return [errors.get(r, result) for r, result in enumerate(out)]

    def _generate_chunk(self, rows: list[_Row]) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            n = len(row.prompt_ids)
            input_ids[k, width - n:] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attention[k, width - n:] = 1
        sampler = _RowSampler(self, rows)
        config = GenerationConfig(
            max_new_tokens=max(row.params.max_tokens for row in rows), do_sample=False, num_beams=1,
            pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids) or None,
            bos_token_id=self.model.generation_config.bos_token_id, use_cache=True)
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([sampler.criteria]))
        self.model_calls += 1
        self.stats.batches += 1

    def _completion(self, row: _Row) -> Completion:
        token_lps = tuple(row.logprobs) if row.params.logprobs else ()
        text = row.text if row.text is not None else self.decode(row.ids)
        return Completion(text, tuple(row.ids), float(sum(token_lps)), row.finish_reason, row.stop_reason,
                          token_lps)

    # ------------------------------------------------------------------------------------------- scoring
    async def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs (temperature 1) of each continuation after its prompt.

        The prompt and the continuation are tokenised separately and joined, the way a generated
        continuation follows its prompt, so ``len(result[k]) == count_tokens(continuations[k])``.
        """
        self._check_open()
        if len(prompts) != len(continuations):
            raise ValueError(f"score needs one continuation per prompt, got {len(prompts)} prompts and "
                             f"{len(continuations)} continuations")
        return await self._scorer.submit(list(prompts), tuple(continuations))

    async def _run_score_batch(self, requests) -> list[list[list[float]]]:
        return await asyncio.to_thread(self._score_sync, requests)

    def _score_sync(self, requests) -> list[list[list[float]]]:
        items = []  # (request, index, prompt ids, continuation ids)
        for r, (prompts, continuations) in enumerate(requests):
            for k, (p, c) in enumerate(zip(prompts, continuations)):
                items.append((r, k, self.encode(p), self.tokenizer(c, add_special_tokens=False).input_ids))
        out = [[[] for _ in prompts] for prompts, _ in requests]
        order = sorted(items, key=lambda it: len(it[2]) + len(it[3]))
        for start in range(0, len(order), self.max_batch_rows):
            chunk = [it for it in order[start:start + self.max_batch_rows] if it[3]]
            if not chunk:
                continue
            with self._lock:
                self._check_open()
                scores = self._score_chunk([(it[2], it[3]) for it in chunk])
            for it, s in zip(chunk, scores):
                out[it[0]][it[1]] = s
        return out

    def _score_chunk(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        import torch

        # Right padding: positions start at 0 for every row without passing position ids.
        seqs = [p + c for p, c in pairs]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            input_ids[k, :len(s)] = torch.tensor(s, dtype=torch.long)
            attention[k, :len(s)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device),
                                attention_mask=attention.to(self.device)).logits
        result = []
        for k, (p, c) in enumerate(pairs):
            # The logits at position t predict token t + 1.
            lg = logits[k, len(p) - 1:len(p) + len(c) - 1].float()
            target = torch.tensor(c, dtype=torch.long, device=lg.device)
            lp = lg.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(lg, dim=-1)
            result.append(lp.tolist())
        return result

    # ------------------------------------------------------------------------------------------- lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("HFPolicy is closed")

    def close(self) -> None:
        """Free the model; later calls raise."""
        with self._lock:
            self._closed = True
            self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    def __enter__(self) -> HFPolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _RowSampler:
    """Logits processor that chooses every row's next token and keeps the rows' state.

    Called by ``generate`` once per step with the raw float32 logits of the last position. It samples each
    live row with the row's own temperature/top_p/random stream, records the token and its temperature-1
    log-prob, checks EOS, stop strings and the token budget, and returns scores that are -inf except at the
    chosen token, so ``generate``'s greedy step takes it. ``criteria`` reports the finished rows back.
    """

    def __init__(self, policy: HFPolicy, rows: list[_Row]) -> None:
        import torch

        self.policy = policy
        self.rows = rows
        self.temperature = torch.tensor([r.params.temperature for r in rows], dtype=torch.float32)
        self.top_p = torch.tensor([r.params.top_p for r in rows], dtype=torch.float32)
        # Enough tokens to hold the longest stop string even at one byte per token (4 bytes per character).
        longest = max((len(s) for r in rows for s in r.params.stop), default=0)
        self.window = 4 * longest + 2
        self.criteria = _Criteria(self)

    def done_mask(self, device):
        import torch

        return torch.tensor([r.done for r in self.rows], dtype=torch.bool, device=device)

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float()
        live = [k for k, r in enumerate(self.rows) if not r.done]
        chosen = scores.argmax(dim=-1)
        if live:
            dev = scores.device
            temp = self.temperature.to(dev)
            sample_rows = [k for k in live if self.rows[k].params.temperature > 0]
            if sample_rows:
                idx = torch.tensor(sample_rows, dtype=torch.long, device=dev)
                probs = torch.softmax(scores[idx] / temp[idx, None], dim=-1)
                top_p = self.top_p.to(dev)[idx]
                if bool((top_p < 1).any()):
                    # Nucleus: keep the most likely tokens whose mass before them is under top_p.
                    sp, si = probs.sort(dim=-1, descending=True)
                    drop = (sp.cumsum(dim=-1) - sp) >= top_p[:, None]
                    sp = sp.masked_fill(drop, 0.0)
                    probs = torch.zeros_like(probs).scatter_(1, si, sp)
                cdf = probs.cumsum(dim=-1)
                u = torch.tensor([self.rows[k].rng.random() for k in sample_rows], dtype=torch.float32,
                                 device=dev)
                # Inverse CDF with a row's own uniform: the draw depends on that row alone.
                pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
                chosen[idx] = pick.clamp(max=scores.shape[-1] - 1)
            need_lp = any(self.rows[k].params.logprobs for k in live)
            lse = torch.logsumexp(scores, dim=-1) if need_lp else None
            chosen_lp = (scores.gather(1, chosen[:, None]).squeeze(1) - lse).tolist() if need_lp else None
            tokens = chosen.tolist()
            for k in live:
                self._advance(k, tokens[k], chosen_lp[k] if need_lp else 0.0)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out

    def _advance(self, k: int, token: int, logprob: float) -> None:
        row, policy = self.rows[k], self.policy
        if token in policy.eos_ids:
            row.done, row.finish_reason = True, "stop"
            return
        row.ids.append(token)
        row.logprobs.append(logprob)
        stops = [s for s in row.params.stop if s]
        if stops and any(s in policy.decode(row.ids[-self.window:]) for s in stops):
            text, which = truncate_at_stop(policy.decode(row.ids), stops)
            if which is not None:
                # The sampled token stays even when it runs past the stop string; only the text is cut.
                row.done, row.finish_reason, row.stop_reason, row.text = True, "stop", which, text
                return
        if len(row.ids) >= row.params.max_tokens:
            row.done, row.finish_reason = True, "length"


class _Criteria:
    """Stopping criteria: the rows ``_RowSampler`` has finished."""

    def __init__(self, sampler: _RowSampler) -> None:
        self.sampler = sampler

    def __call__(self, input_ids, scores, **kwargs):
        return self.sampler.done_mask(input_ids.device)
