"""One contract, every backend: the same prompts (text and token ids), n, stop and max_tokens give well-formed
completions."""

from __future__ import annotations

import importlib.util
import math

import pytest

from treepref.backends.base import Sampling


QUESTIONS = ["What is 12 + 7?", "Name three colours, one per line."]
STEP = "\n\n"


@pytest.fixture(scope="module")
def hf_policy(model_dir):
    if importlib.util.find_spec("treepref.backends.hf") is None:
        pytest.skip("treepref.backends.hf is not written yet")
    from treepref.backends.hf import HFPolicy

    policy = HFPolicy(model_dir)
    yield policy
    policy.close()


@pytest.fixture(scope="module")
def scripted_policy():
    from treepref.backends.scripted import EOS, ScriptedPolicy

    return ScriptedPolicy(lambda steps: ["We add the numbers", "The answer is 19." + EOS,
                                         "First we look at the question and think about it for a while"])


BACKENDS = [
    pytest.param("scripted_policy", id="scripted"),
    pytest.param("hf_policy", id="hf", marks=pytest.mark.slow),
    pytest.param("vllm_policy", id="vllm", marks=[pytest.mark.slow, pytest.mark.vllm]),
    pytest.param("openai_policy", id="openai-vllm-server", marks=[pytest.mark.slow, pytest.mark.vllm,
                                                                    pytest.mark.own_engine]),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_conformance(backend, request, aio):
    policy = request.getfixturevalue(backend)
    texts = [policy.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    prompts = texts + [policy.encode(texts[0])]  # and one as token ids, the way searches send prompts
    params = Sampling(n=3, max_tokens=12, stop=(STEP,), temperature=1.0)
    before = policy.stats.completions
    out = aio(policy.generate(prompts, params))

    assert len(out) == len(prompts)
    for per_prompt in out:
        assert len(per_prompt) == params.n
        for c in per_prompt:
            assert c.finish_reason in ("stop", "length"), c
            assert len(c.token_ids) == c.n_tokens <= params.max_tokens
            assert math.isfinite(c.logprob) and c.logprob <= 1e-6, c
            if c.stop_reason is not None:  # ended at a stop string, which is kept
                assert c.stop_reason in params.stop and c.finish_reason == "stop"
                assert c.text.endswith(c.stop_reason)
            elif c.finish_reason == "length":
                assert c.n_tokens == params.max_tokens
            # else: the model ended the sequence (EOS)
            # The ids are the sampled ones: they spell the text (the last may run past a stop string).
            assert policy.decode(c.token_ids).startswith(c.text), (c, policy.decode(c.token_ids))
            if c.token_logprobs:
                assert len(c.token_logprobs) == c.n_tokens
                assert c.logprob == pytest.approx(sum(c.token_logprobs), abs=1e-6)
            # Retokenising decoded text may merge or split a token or two (and drops an EOS token).
            assert abs(policy.count_tokens(c.text) - c.n_tokens) <= 2 + c.n_tokens // 5, (c, policy.count_tokens(c.text))
    assert policy.stats.completions - before == len(prompts) * params.n
