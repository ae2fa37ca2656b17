"""A policy behind an OpenAI-compatible *completions* endpoint (``vllm serve``, SGLang, TGI, hosted APIs).

Each prompt of a ``generate`` call is one ``POST {base_url}/completions`` with ``n`` samples, so the siblings
of an expansion share their prompt on the server; concurrent calls go out at once, up to
``max_concurrency`` requests in flight, and the server batches them. Transient failures (429, 5xx,
timeouts, dropped connections) are retried with exponential backoff; any other 4xx raises at once with
the status and the server's message.

A prompt is text or token ids; ids are sent as the request's ``prompt`` array of ints (the completions API
takes one; vLLM uses it as given), so a child's prompt can be its parent's ids plus the ids of the step.

Talking to vLLM (detected from its ``/version`` route, or ``server="vllm"``) the request also asks for
``include_stop_str_in_output`` (so a step keeps its delimiter) and ``return_tokens_as_token_ids`` with
log-probs, even under ``Sampling(logprobs=False)`` (so token ids are exactly the sampled ones). Other servers
drop the stop string; it is put back when the response names it (``stop_reason``), and token ids come from
the local tokenizer (a re-tokenisation of the text, which may not be what was sampled).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from typing import Any, Sequence

from treepref.backends.base import Completion, GenerationStats, Prompt, Sampling, without_eos

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackendError(RuntimeError):
    """The server refused a request (a 4xx other than 408/409/429), or retries ran out."""

    retryable = False  # this backend has retried what can be retried; the runner does not try again

    def __init__(self, message: str, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class OpenAIPolicy:
    """A ``Policy`` on an OpenAI-compatible completions server.

    Args:
        model: the model name the server knows; ``None`` asks the server (``GET /models``, the first one).
        base_url: the API root including the version, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: sent as a bearer token; default ``$OPENAI_API_KEY`` when set.
        max_concurrency: most HTTP requests in flight.
        timeout_s: per-request timeout.
        max_retries: retries of one request after a transient failure (429, 5xx, timeout, connection).
        backoff_s: first retry delay; doubles each retry, with jitter (a ``Retry-After`` header wins).
        tokenizer: a local tokenizer folder or hub id for ``chat_prompt``/``count_tokens`` and token ids;
            default ``model`` when it is a local folder.
        server: "vllm", "openai" (any other server) or "auto" (probe ``/version`` once).
        extra_body: more fields for every request body (e.g. ``{"top_k": 20}`` for vLLM).
    """

    def __init__(self, model: str | None = None, *, base_url: str, api_key: str | None = None,
                 max_concurrency: int = 16, timeout_s: float = 60, max_retries: int = 5, backoff_s: float = 0.5,
                 tokenizer: str | None = None, server: str = "auto",
                 extra_body: dict[str, Any] | None = None) -> None:
        try:
            import httpx  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the openai backend needs httpx: pip install 'treepref[server]'") from exc
        if server not in ("auto", "vllm", "openai"):
            raise ValueError(f"server must be 'auto', 'vllm' or 'openai', got {server!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.server = server
        self.extra_body = dict(extra_body or {})
        self._tokenizer_name = tokenizer
        self._tokenizer = None
        self.stats = GenerationStats()
        self.retries = 0  # transient failures retried, for run summaries and tests
        self._client = None
        self._client_loop = None
        self._sem: asyncio.Semaphore | None = None
        self._setup_lock: asyncio.Lock | None = None

    # --- tokenizer ----------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            name = self._tokenizer_name
            if name is None and self.model and os.path.isdir(self.model):
                name = self.model
            if name is None:
                raise RuntimeError("OpenAIPolicy needs a local tokenizer for chat_prompt/count_tokens: pass "
                                   "tokenizer=<folder or hub id> (or a model name that is a local folder)")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(name)
        return self._tokenizer

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        """The ids a text prompt becomes on the server, by the local tokenizer (special tokens such as BOS
        added, as ``vllm serve`` does for completions)."""
        return list(self.tokenizer.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of token ids by the local tokenizer, special tokens kept, no space clean-up."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    # --- HTTP ---------------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _ensure_client(self):
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            # An httpx client and a semaphore belong to one event loop; a new loop gets fresh ones.
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers(),
                                             limits=httpx.Limits(max_connections=self.max_concurrency))
            self._client_loop = loop
            self._sem = asyncio.Semaphore(self.max_concurrency)
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            if self.server == "auto":
                self.server = await self._detect_server()
            if self.model is None:
                data = await self._request("GET", "/models")
                models = data.get("data") or []
                if not models:
                    raise OpenAIBackendError(f"{self.base_url}/models lists no model; pass model=...")
                self.model = models[0]["id"]
        return self._client

    async def _detect_server(self) -> str:
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        try:
            r = await self._client.get(root + "/version")
            if r.status_code == 200 and "version" in r.json():
                return "vllm"
        except Exception:
            pass
        return "openai"

    async def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One API call with retries on transient failures."""
        import httpx

        url = self.base_url + path
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(delay)
            delay = self.backoff_s * (2 ** attempt) * (0.5 + random.random())
            try:
                async with self._sem:
                    r = await self._client.request(method, url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = exc
                continue
            if r.status_code < 400:
                return r.json()
            text = r.text[:2000]
            if r.status_code in _RETRY_STATUS or r.status_code >= 500:
                last = OpenAIBackendError(f"{method} {url} -> HTTP {r.status_code}: {text}", r.status_code, text)
                retry_after = r.headers.get("retry-after")
                if retry_after:
                    try:
                        delay = min(float(retry_after), 60.0)
                    except ValueError:
                        pass
                continue
            raise OpenAIBackendError(f"{method} {url} -> HTTP {r.status_code}: {text}", r.status_code, text)
        raise OpenAIBackendError(f"{method} {url} failed after {self.max_retries} retries: {last}",
                                 getattr(last, "status", None), getattr(last, "body", None)) from last

    # --- Policy -------------------------------------------------------------------------------------------
    async def generate(self, prompts: Sequence[Prompt], params: Sampling) -> list[list[Completion]]:
        """``params.n`` completions for each prompt (text or token ids): one request per prompt."""
        if not prompts:
            return []
        await self._ensure_client()
        results = list(await asyncio.gather(*(self._one(p, params) for p in prompts)))
        self.stats.record(prompts, params, results)
        return results

    def _body(self, prompt: Prompt, params: Sampling) -> dict:
        """The request body ``generate`` sends for one prompt."""
        prompt = prompt if isinstance(prompt, str) else [int(t) for t in prompt]
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "n": params.n,
                                "max_tokens": params.max_tokens, "temperature": params.temperature,
                                "top_p": params.top_p, "logprobs": 0 if params.logprobs else None}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if self.server == "vllm":
            body["include_stop_str_in_output"] = True
            body["return_tokens_as_token_ids"] = True
            body["logprobs"] = 0  # the token ids come with the log-probs
        body.update(self.extra_body)
        return {k: v for k, v in body.items() if v is not None}

    async def _one(self, prompt: Prompt, params: Sampling) -> list[Completion]:
        data = await self._request("POST", "/completions", self._body(prompt, params))
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != params.n:
            raise OpenAIBackendError(f"asked for n={params.n} completions, the server returned {len(choices)}")
        return [self._completion(c, params) for c in choices]

    def _completion(self, choice: dict, params: Sampling) -> Completion:
        text = choice.get("text") or ""
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        stop_reason = choice.get("stop_reason")
        stop_reason = stop_reason if isinstance(stop_reason, str) else None  # an int is a stop token (EOS)
        if stop_reason and not text.endswith(stop_reason):
            text += stop_reason  # servers that drop the matched stop string
        lp = choice.get("logprobs") or {}
        tokens = lp.get("tokens") or []
        ids = _token_ids(tokens)
        if ids is None:
            ids = self._encode_or_placeholder(text, len(tokens))
        token_lps = [x for x in (lp.get("token_logprobs") or []) if x is not None]
        logprob = float(sum(token_lps)) if token_lps else (math.nan if not params.logprobs else 0.0)
        # Per-token log-probs only where they line up with the ids (they are the server's tokens).
        aligned = tuple(map(float, token_lps)) if len(token_lps) == len(tokens) == len(ids) else ()
        if finish == "stop" and stop_reason is None and (eos := self._eos_id()) is not None:  # ended on EOS
            n = len(ids)
            ids, aligned = without_eos(ids, aligned, {eos})
            if len(ids) < n and token_lps:
                logprob = float(sum(token_lps[:-1]))
        return Completion(text, tuple(ids), logprob, finish, stop_reason, aligned)

    def _eos_id(self) -> int | None:
        """The EOS id by the local tokenizer; None without one (then ids cannot be told from EOS)."""
        try:
            return self.tokenizer.eos_token_id
        except RuntimeError:
            return None

    def _encode_or_placeholder(self, text: str, n_tokens: int) -> list[int]:
        try:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        except RuntimeError:  # no tokenizer: keep the count the server reported, ids unknown (-1)
            return [-1] * n_tokens
        # The server's own count wins (the retokenised text can differ, e.g. a dropped EOS token).
        return ids if not n_tokens or len(ids) == n_tokens else [-1] * n_tokens

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def close(self) -> None:
        client, loop = self._client, self._client_loop
        self._client = None
        if client is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            running.create_task(client.aclose())
        elif loop is not None and not loop.is_closed():
            loop.run_until_complete(client.aclose())


def _token_ids(tokens: list) -> list[int] | None:
    """vLLM's ``return_tokens_as_token_ids`` writes each token as ``token_id:<id>``."""
    if not tokens:
        return None
    ids = []
    for t in tokens:
        if not isinstance(t, str) or not t.startswith("token_id:"):
            return None
        try:
            ids.append(int(t[len("token_id:"):]))
        except ValueError:
            return None
    return ids
