"""HFPolicy on the real SmolLM2-135M-Instruct (bf16). Token budgets are tiny: the file must stay cheap on 2 CPUs."""

from __future__ import annotations

import asyncio
import contextlib
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


@contextlib.contextmanager
def model_inputs(policy):
    """Every forward call's prompt rows as the model received them (padding removed by the attention mask):
    the first call of a ``generate`` is the prefill, so ``calls[0]`` is the rows' prompt ids."""
    calls = []

    def hook(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")  # no mask when no row is padded
        mask = ids.new_ones(ids.shape) if mask is None else mask[:, -ids.shape[1]:]
        calls.append([row[keep.bool()].tolist() for row, keep in zip(ids, mask)])

    handle = policy.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def check(policy, c: Completion, params: Sampling) -> None:
    """Invariants every completion keeps."""
    assert 1 <= len(c.token_ids) <= params.max_tokens
    # The ids are exactly what was sampled, so they decode to the text, or, when the token that completed
    # the stop string ran past it (SmolLM2 has "\n\n\n" and "\n\n  " tokens), to a little more. (The old
    # contract swapped that token for a re-tokenised piece so that the two matched exactly; the piece was a
    # token the model never wrote there, e.g. "\n\n" as 1116, and a child prompt built on it went astray.)
    decoded = policy.decode(c.token_ids)
    assert decoded.startswith(c.text)
    if c.stop_reason is None:
        assert decoded == c.text
    else:  # the last token completed the stop string
        assert c.stop_reason not in policy.decode(c.token_ids[:-1])
    # Re-tokenising the text may split it differently from how the model sampled it, so the token count
    # agrees only nearly.
    assert abs(policy.count_tokens(c.text) - len(c.token_ids)) <= max(2, len(c.token_ids) // 8)
    if params.logprobs:
        assert math.isfinite(c.logprob) and c.logprob < 0
        assert len(c.token_logprobs) == len(c.token_ids) and all(x <= 0 for x in c.token_logprobs)
        assert c.logprob == pytest.approx(sum(c.token_logprobs), abs=1e-9)
    else:
        assert c.logprob == 0.0 and c.token_logprobs == ()
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
    # Stopping at "\n" can make a sampled "\n\n" token run past the stop string; the sampled id is kept.
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
        assert c.stop_reason == "\n" and "\n" in policy.decode(c.token_ids[-1:])


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


# --- token-id prompts ----------------------------------------------------------------------------------------
def step_prompt(policy) -> list[int]:
    """A question and a first step as ids, ending in "\\n\\n" the way the model writes it: 198, 198."""
    question = ask(policy, "Tom has 3 apples and buys 5 more. How many apples does he have? "
                           "Solve it step by step, one step per paragraph.")
    return policy.encode(question + "Step 1: Tom has 3 apples.") + [198, 198]


def test_id_prompts_reach_the_model_as_given(policy):
    ids = step_prompt(policy)
    text = policy.decode(ids)
    assert policy.encode(text)[-1] == 1116  # the text form ends in the one "\n\n" token instead
    policy.stats.log = []
    try:
        with model_inputs(policy) as calls:
            out = asyncio.run(policy.generate([ids, text, tuple(ids)], Sampling(temperature=0, max_tokens=3)))
        # Both forms in one batch: the model got the ids as given, and the text as ``encode`` makes it.
        assert sorted(calls[0]) == sorted([ids, policy.encode(text), ids])
        assert policy.encode(text) != ids
        assert policy.stats.log[0][0] == [ids, text, tuple(ids)]  # the log keeps prompts as given
    finally:
        policy.stats.log = None
    assert out[0] == out[2] and len(out) == 3


def test_child_prompt_is_parent_ids_plus_step(policy):
    parent = step_prompt(policy)
    params = Sampling(n=3, temperature=0.7, max_tokens=32, stop=(STEP,), seed=7)
    [steps] = asyncio.run(policy.generate([parent], params))
    children = []
    for c in steps:
        check(policy, c, params)
        child = parent + list(c.token_ids)
        assert policy.decode(child).startswith(policy.decode(parent) + c.text)
        children.append(child)
    with model_inputs(policy) as calls:
        asyncio.run(policy.generate(children, Sampling(temperature=0, max_tokens=1)))
    assert sorted(calls[0]) == sorted(children)


def test_a_prompt_the_model_cannot_take_fails_alone_in_its_batch(policy):
    """An empty prompt and one past the model's positions fail their own callers; the rest of the batch is
    generated in the same model call."""
    from treepref.backends.base import ContextLengthError

    good = policy.encode(ask(policy, "What is 2 + 2?"))
    too_long = good * (policy.max_context // len(good) + 1)
    params = Sampling(n=1, max_tokens=3, seed=1)

    async def batch():
        return await asyncio.gather(*(policy.generate([p], params) for p in (good, [], too_long, good)),
                                    return_exceptions=True)

    calls = policy.model_calls
    first, empty, long_, last = asyncio.run(batch())
    assert isinstance(first, list) and isinstance(last, list) and first[0][0].n_tokens >= 1
    assert isinstance(empty, ValueError) and "at least one token" in str(empty)
    assert isinstance(long_, ContextLengthError) and long_.n_tokens == len(too_long)
    assert policy.model_calls == calls + 1
