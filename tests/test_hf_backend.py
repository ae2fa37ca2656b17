"""HFPolicy on the real SmolLM2-135M-Instruct (bf16). Token budgets are tiny: the file must stay cheap on 2 CPUs."""

from __future__ import annotations

import asyncio
import math

import pytest

from treepref.backends import make_policy
from treepref.backends.base import Completion, Policy, Sampling

pytest.importorskip("transformers")

STEP = "\n\n"


@pytest.fixture(scope="module")
def policy(model_dir):
    import torch

    threads = torch.get_num_threads()
    # One thread: on a busy 2-core machine two OpenMP threads per process were ~7x slower than one.
    p = make_policy("hf", model_dir, dtype="bfloat16", seed=0, num_threads=1)
    yield p
    p.close()
    torch.set_num_threads(threads)


def ask(policy, question: str) -> str:
    return policy.chat_prompt([{"role": "user", "content": question}])


def check(policy, c: Completion, params: Sampling) -> None:
    """Invariants every completion keeps."""
    tok = policy.tokenizer
    assert 1 <= len(c.token_ids) <= params.max_tokens
    # The ids are exactly the text (the last id is swapped for the stop piece when a sampled token ran past
    # the stop string, e.g. "\n\n\n"; for SmolLM2 that piece is always one token).
    assert tok.decode(list(c.token_ids)) == c.text
    # Re-tokenising the text may split it differently from how the model sampled it, so the token count
    # agrees only nearly.
    assert abs(policy.count_tokens(c.text) - len(c.token_ids)) <= max(2, len(c.token_ids) // 8)
    if params.logprobs:
        assert math.isfinite(c.logprob) and c.logprob < 0
    else:
        assert c.logprob == 0.0
    if c.finish_reason == "length":
        assert len(c.token_ids) == params.max_tokens and c.stop_reason is None
    else:
        assert c.finish_reason == "stop"
    if c.stop_reason is not None:
        assert c.finish_reason == "stop" and c.stop_reason in params.stop
        assert c.text.endswith(c.stop_reason) and c.text.count(c.stop_reason) == 1
    for s in params.stop:  # no stop string anywhere before the end
        assert c.text.find(s) in (-1, len(c.text) - len(s))


def test_policy_protocol_and_text_helpers(policy):
    assert isinstance(policy, Policy)
    prompt = ask(policy, "Hi")
    assert prompt.endswith("<|im_start|>assistant\n") and "Hi" in prompt
    assert policy.count_tokens("hello world") == 2


def test_steps_stop_at_delimiter_with_n_samples(policy):
    # A question plus the steps so far, as a search renders a node: the next step usually ends in "\n\n".
    prompts = [ask(policy, "Tom has 3 apples and buys 5 more. How many apples does he have? "
                           "Solve it step by step, one step per paragraph.") + "Step 1: Tom starts with 3 apples.\n\n",
               ask(policy, "List three fruits, one paragraph each.")
               + "Here are three fruits.\n\n1. Apples are crunchy and sweet.\n\n",
               ask(policy, "Give three tips for studying, one paragraph each.") + "Here are three tips.\n\n"]
    steps = Sampling(n=3, temperature=0.7, max_tokens=32, stop=(STEP,), seed=7)
    # Stopping at "\n" makes the sampled "\n\n" token run past the stop string: the last id is swapped.
    lines = Sampling(n=1, temperature=0, max_tokens=32, stop=("\n",))

    async def both():
        return await asyncio.gather(policy.generate(prompts, steps), policy.generate(prompts[:2], lines))

    calls = policy.model_calls
    out, first_lines = asyncio.run(both())
    assert policy.model_calls - calls == 1  # different sampling settings still share one model call
    assert len(out) == 3 and all(len(r) == 3 for r in out)
    for c in (c for r in out for c in r):
        check(policy, c, steps)
    assert sum(c.stop_reason == STEP for r in out for c in r) >= 4, [c.text for r in out for c in r]
    for (c,) in first_lines:
        check(policy, c, lines)
        assert c.stop_reason == "\n" and c.token_ids[-1] == policy.tokenizer("\n").input_ids[0]


def test_max_tokens_and_no_logprobs(policy):
    prompt = ask(policy, "Write a long story about a dragon.")
    for params in (Sampling(max_tokens=5, temperature=0), Sampling(max_tokens=7, temperature=1.0, logprobs=False)):
        (c,), = asyncio.run(policy.generate([prompt], params))
        check(policy, c, params)
        assert c.finish_reason == "length" and len(c.token_ids) == params.max_tokens


def test_concurrent_calls_are_merged_and_routed(policy):
    topics = ["cats", "the sea", "bread", "trains", "winter", "music", "chess", "rain"]
    prompts = [ask(policy, f"Say one sentence about {t}.") for t in topics]
    params = Sampling(temperature=0, max_tokens=6)

    async def many():
        return await asyncio.gather(*(policy.generate([p], params) for p in prompts))

    calls, requests = policy.model_calls, policy.stats.requests
    each = asyncio.run(many())
    assert policy.model_calls - calls == 1  # eight requests, one model call
    assert policy.stats.requests - requests == 8
    # Greedy decoding of the same batch in one request gives the same rows: every caller got its own.
    together = asyncio.run(policy.generate(prompts, params))
    assert [r[0][0].text for r in each] == [r[0].text for r in together]
    assert len({r[0].text for r in together}) > 1


def test_seed_reproduces(policy):
    prompt = ask(policy, "Name a colour.")
    params = Sampling(n=2, temperature=1.0, max_tokens=8, seed=123)
    first = asyncio.run(policy.generate([prompt], params))
    again = asyncio.run(policy.generate([prompt], params))
    other = asyncio.run(policy.generate([prompt], params.with_(seed=124)))
    assert first == again
    assert [c.token_ids for c in first[0]] != [c.token_ids for c in other[0]]


def test_score_prefers_likely_continuation(policy):
    prompt = ask(policy, "What colour is the sky on a clear day?")
    good, bad = "The sky is blue.", " zebra quartz banjo ungulate"
    likely, garbage = asyncio.run(policy.score([prompt, prompt], [good, bad]))
    assert len(likely) == policy.count_tokens(good) and len(garbage) == policy.count_tokens(bad)
    assert all(math.isfinite(x) and x <= 0 for x in likely + garbage)
    assert sum(likely) / len(likely) > sum(garbage) / len(garbage) + 2
