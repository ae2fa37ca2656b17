"""The Coalescer: one bad request fails alone, never the requests it was batched with."""

from __future__ import annotations

import asyncio

import pytest

from treepref.backends.base import Coalescer, ContextLengthError, Sampling, check_fits


class Batcher:
    """A ``run_batch`` that fails a whole batch containing a prompt "bad" (the way a backend's single model
    call fails), and records every batch it was given."""

    def __init__(self, per_request: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.per_request = per_request  # report the bad request's error in its slot instead of raising

    async def __call__(self, requests):
        self.batches.append([p for prompts, _ in requests for p in prompts])
        await asyncio.sleep(0)
        if self.per_request:
            return [RuntimeError(f"bad request {prompts}") if "bad" in prompts else [[p.upper()] for p in prompts]
                    for prompts, _ in requests]
        if any("bad" in prompts for prompts, _ in requests):
            raise RuntimeError("the batch failed")
        return [[[p.upper()] for p in prompts] for prompts, _ in requests]


async def submit_all(coalescer, prompts):
    return await asyncio.gather(*(coalescer.submit([p], Sampling()) for p in prompts), return_exceptions=True)


@pytest.mark.parametrize("serial", [True, False])
def test_a_failing_batch_is_split_so_only_the_bad_request_fails(serial):
    run = Batcher()
    out = asyncio.run(submit_all(Coalescer(run, serial=serial), ["a", "bad", "c"]))
    assert out[0] == [["A"]] and out[2] == [["C"]]
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "the batch failed"
    # one batch of all three failed, then each request alone
    assert run.batches[0] == ["a", "bad", "c"] and sorted(map(tuple, run.batches[1:])) == [("a",), ("bad",), ("c",)]


def test_an_error_reported_for_one_request_fails_only_that_one_without_a_rerun():
    run = Batcher(per_request=True)
    out = asyncio.run(submit_all(Coalescer(run), ["a", "bad", "c"]))
    assert out[0] == [["A"]] and out[2] == [["C"]] and isinstance(out[1], RuntimeError)
    assert run.batches == [["a", "bad", "c"]]


def test_a_lone_failing_request_gets_its_error():
    run = Batcher()
    [out] = asyncio.run(submit_all(Coalescer(run), ["bad"]))
    assert isinstance(out, RuntimeError) and run.batches == [["bad"]]


def test_check_fits_names_the_token_count_and_the_limit():
    check_fits(4095, 4096)
    check_fits(10**6, None)
    with pytest.raises(ContextLengthError, match="7879 tokens does not fit the model's context of 4096") as err:
        check_fits(7879, 4096)
    assert (err.value.n_tokens, err.value.limit, err.value.retryable) == (7879, 4096, False)
    with pytest.raises(ContextLengthError):  # no room for a single generated token
        check_fits(4096, 4096)
