"""The OpenAI-compatible backend: behaviour against a real ``vllm serve``, error paths against a local stub."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from treepref.backends.base import Sampling
from treepref.backends.openai import OpenAIBackendError, OpenAIPolicy

pytest_plugins = ["backend_fixtures"]

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
    [outs] = aio(openai_policy.generate([prompt], params))
    assert openai_policy.server == "vllm" and len(outs) == 3
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
