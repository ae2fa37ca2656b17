"""The OpenAI-compatible backend: behaviour against a real ``vllm serve``, error paths against a local stub."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from treepref.backends.base import Sampling
from treepref.backends.openai import OpenAIBackendError, OpenAIPolicy, _token_ids

from sampled import sample_until


QUESTION = [{"role": "user", "content": "What is 12 + 7? Explain step by step."}]


# --- a stub server for the error paths -----------------------------------------------------------------------
class _Stub(BaseHTTPRequestHandler):
    script: list = []  # (status, body) answered in order; the last one repeats
    seen: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self._send(404, {"error": "no such route"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        status, payload = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self._send(status, payload, retry_after=status == 429)

    def _send(self, status, payload, retry_after=False):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)


def _ok(n=2):
    return {"choices": [{"index": i, "text": f"Add {i}", "finish_reason": "stop", "stop_reason": "\n\n",
                         "logprobs": {"tokens": ["Add", f" {i}"], "token_logprobs": [-0.5, -1.0]}}
                        for i in range(n)]}


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    _Stub.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_retries_429_and_5xx_then_succeeds(stub, aio):
    _, url = stub
    _Stub.script = [(429, {"error": "slow down"}), (503, {"error": "busy"}), (200, _ok(2))]
    policy = OpenAIPolicy("m", base_url=url, backoff_s=0.01, max_retries=3)
    [outs] = aio(policy.generate(["Q:"], Sampling(n=2, stop=("\n\n",), seed=3)))
    assert policy.retries == 2 and len(_Stub.seen) == 3
    assert [c.text for c in outs] == ["Add 0\n\n", "Add 1\n\n"]  # the dropped stop string is put back
    assert outs[0].stop_reason == "\n\n" and outs[0].logprob == pytest.approx(-1.5)
    assert outs[0].n_tokens == 2 and outs[0].token_ids == (-1, -1)  # no tokenizer: count kept, ids unknown
    sent = _Stub.seen[-1]
    assert sent["n"] == 2 and sent["stop"] == ["\n\n"] and sent["seed"] == 3 and sent["logprobs"] == 0
    assert "include_stop_str_in_output" not in sent  # not a vLLM server (no /version route)
    assert outs[0].token_logprobs == (-0.5, -1.0)


def test_id_prompt_is_sent_as_an_int_array(stub, aio):
    _, url = stub
    _Stub.script = [(200, _ok(1))]
    policy = OpenAIPolicy("m", base_url=url)
    aio(policy.generate([(1, 2, 198, 198), "Q:"], Sampling(n=1)))
    assert sorted(map(str, (body["prompt"] for body in _Stub.seen))) == ["Q:", "[1, 2, 198, 198]"]


def test_retries_run_out(stub, aio):
    _, url = stub
    _Stub.script = [(500, {"error": "boom"})]
    policy = OpenAIPolicy("m", base_url=url, backoff_s=0.001, max_retries=2)
    with pytest.raises(OpenAIBackendError, match="after 2 retries"):
        aio(policy.generate(["Q:"], Sampling()))
    assert len(_Stub.seen) == 3


def test_client_error_is_raised_with_status_and_body(stub, aio):
    _, url = stub
    _Stub.script = [(400, {"error": {"message": "max_tokens is too large"}})]
    policy = OpenAIPolicy("m", base_url=url, backoff_s=0.001)
    with pytest.raises(OpenAIBackendError, match="HTTP 400.*max_tokens is too large") as info:
        aio(policy.generate(["Q:"], Sampling()))
    assert info.value.status == 400 and len(_Stub.seen) == 1  # no retry on a client error


def test_connection_refused_is_retried(aio):
    from backend_fixtures import _free_port

    policy = OpenAIPolicy("m", base_url=f"http://127.0.0.1:{_free_port()}/v1", backoff_s=0.001, max_retries=2,
                          server="openai")
    with pytest.raises(OpenAIBackendError, match="after 2 retries"):
        aio(policy.generate(["Q:"], Sampling()))
    assert policy.retries == 2


# --- the real server -----------------------------------------------------------------------------------------
@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_n_stop_logprobs(openai_policy, aio):
    prompt = openai_policy.chat_prompt(QUESTION)
    params = Sampling(n=3, max_tokens=24, stop=(".", "\n\n"))
    # three more while none stopped at a stop string: all three sometimes end on EOS or run out
    outs = sample_until(openai_policy, aio, prompt, params, lambda c: c.stop_reason,
                        "a completion that ended at a stop string", tries=6)
    assert openai_policy.server == "vllm"
    for c in outs:
        assert 1 <= c.n_tokens <= 24 and all(t >= 0 for t in c.token_ids)  # exact ids from the server
        assert math.isfinite(c.logprob) and c.logprob <= 0
        if c.stop_reason is not None:
            assert c.text.endswith(c.stop_reason)
        if c.finish_reason == "length":
            assert c.n_tokens == 24
    assert any(c.stop_reason for c in outs), [c.text for c in outs]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_seed_and_model_discovery(vllm_server, openai_policy, aio):
    prompt = openai_policy.chat_prompt(QUESTION)
    params = Sampling(n=2, max_tokens=8, seed=77)
    a = aio(openai_policy.generate([prompt, prompt], params))
    b = aio(openai_policy.generate([prompt], params))
    assert [c.text for c in a[0]] == [c.text for c in a[1]] == [c.text for c in b[0]]
    anonymous = OpenAIPolicy(base_url=vllm_server, tokenizer=openai_policy.model)
    [[c]] = aio(anonymous.generate([prompt], Sampling(max_tokens=2)))
    assert anonymous.model == openai_policy.model and c.n_tokens >= 1


# --- token-id prompts on the real server ---------------------------------------------------------------------
def _echoed(policy, prompt, aio) -> list[int]:
    """The prompt tokens the server ran on: the body ``generate`` sends for ``prompt``, with ``echo`` added
    (vLLM then returns the prompt's tokens, as ``token_id:<id>``, before the one generated token)."""
    async def go():
        await policy._ensure_client()
        body = {**policy._body(prompt, Sampling(temperature=0, max_tokens=1)), "echo": True}
        return await policy._request("POST", "/completions", body)

    tokens = _token_ids(aio(go())["choices"][0]["logprobs"]["tokens"])
    return tokens[:-1]


def _step_prompt(policy) -> list[int]:
    """A question and a first step as ids, ending in "\\n\\n" the way the model writes it: 198, 198."""
    return policy.encode(policy.chat_prompt(QUESTION) + "Step 1: We add 12 and 7.") + [198, 198]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_uses_id_prompts_as_given(openai_policy, aio):
    ids = _step_prompt(openai_policy)
    text = openai_policy.decode(ids)
    assert openai_policy.encode(text)[-1] == 1116  # the text form ends in the one "\n\n" token instead
    assert _echoed(openai_policy, ids, aio) == ids
    assert _echoed(openai_policy, text, aio) == openai_policy.encode(text) != ids


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_child_prompt_is_parent_ids_plus_step(openai_policy, aio):
    parent = _step_prompt(openai_policy)
    # logprobs=False still gets the exact sampled ids (and their log-probs) from vLLM.
    [steps] = aio(openai_policy.generate([parent], Sampling(n=2, max_tokens=24, stop=("\n\n",), logprobs=False)))
    for c in steps:
        assert len(c.token_logprobs) == c.n_tokens and all(x <= 0 for x in c.token_logprobs)
        assert c.logprob == pytest.approx(sum(c.token_logprobs), abs=1e-6)
        child = parent + list(c.token_ids)
        assert openai_policy.decode(child).startswith(openai_policy.decode(parent) + c.text)
    assert _echoed(openai_policy, child, aio) == child
