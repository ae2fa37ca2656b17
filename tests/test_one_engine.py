"""The suite's guard against two vLLM engines at once (backend_fixtures): a second start fails fast, naming
the engine still running, and a test's own engine first closes the session's in-process one."""

from __future__ import annotations

import pytest

import backend_fixtures as bf


class FakeEngine:
    closed = 0

    def close(self):
        self.closed += 1


@pytest.fixture
def live(monkeypatch):
    table: dict = {}
    monkeypatch.setattr(bf, "LIVE", table)
    return table


def test_a_second_engine_fails_fast_naming_the_first(live):
    live["vllm_policy"] = FakeEngine()
    with pytest.raises(pytest.fail.Exception, match="vllm_server would start a second vLLM engine while "
                                                    "vllm_policy still runs"):
        bf.start_engine("vllm_server")
    bf.start_engine("vllm_policy")  # the same engine asking again is no second one


def test_a_tests_own_engine_closes_the_in_process_one_first(live):
    engine = live["vllm_policy"] = FakeEngine()
    bf.release_engines()
    assert engine.closed == 1 and live == {}
    bf.start_engine("own engine")  # nothing left running: no failure
    bf.release_engines()  # and nothing to close twice
    assert engine.closed == 1


def test_tests_with_their_own_engine_are_ordered_last(request):
    """Within this session's collection, every test of the server or of its own engine comes after the rest."""
    import conftest

    items = request.session.items
    groups = [conftest.group_of(item) for item in items]
    assert groups == sorted(groups)
