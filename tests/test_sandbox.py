"""The code sandbox: hostile programs are contained and reported, and the next run still works."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from treepref.problems import Problem
from treepref.verifiers.sandbox import CodeVerifier, Limits, _uid_processes, extract_code, run_code

FAST = Limits(cpu_s=1, wall_s=4, memory_mb=256, nproc=8)
GOOD = "def add(a, b):\n    return a + b\n"


def still_works():
    r = run_code(GOOD, ["assert add(1, 2) == 3"], limits=FAST)
    assert r.passed and r.error is None, r


def test_passing_and_failing_tests():
    r = run_code(GOOD, ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(0, 0) == 0"], limits=FAST)
    assert not r.passed and r.failed == [1] and r.error is None and r.pass_rate == pytest.approx(2 / 3)
    r = run_code("def f(:\n", ["assert True"], limits=FAST)
    assert r.error == "syntax" and r.failed == [0]
    r = run_code("raise ValueError('boom')", [], limits=FAST)
    assert r.error == "runtime" and "boom" in r.message


def test_infinite_loop_times_out():
    r = run_code("while True:\n    pass\n", ["assert True"], limits=FAST)
    assert r.error == "timeout" and not r.passed
    still_works()


def test_fork_bomb_is_contained():
    r = run_code("import os\nwhile True:\n    os.fork()\n", [], limits=FAST)
    assert r.error in ("process_limit", "timeout", "killed") and not r.passed
    if r.isolation["uid"] is not None:  # every process it left behind was killed
        assert _uid_processes(r.isolation["uid"]) == []
    still_works()


def test_huge_allocation_is_refused():
    r = run_code("x = bytearray(10 * 2**30)\n", [], limits=FAST)
    assert r.error == "memory"
    still_works()


@pytest.mark.parametrize("fence", [True, False])
def test_writing_outside_is_blocked(fence):
    target = f"/tmp/treepref-escape-{uuid.uuid4().hex}.txt" if fence else f"/work/treepref-escape-{uuid.uuid4().hex}"
    r = run_code(f"open({target!r}, 'w').write('x')\n", [], limits=FAST, python_fence=fence)
    assert r.error in ("forbidden", "runtime") and "ermission" in r.message or "not allowed" in r.message
    assert not os.path.exists(target)
    r = run_code("open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'\n", [],
                 limits=FAST)
    assert r.error is None  # the sandbox folder itself is writable
    still_works()


@pytest.mark.parametrize("fence", [True, False])
def test_socket_is_blocked(fence):
    code = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\n"
    r = run_code(code, [], limits=FAST, python_fence=fence)
    assert r.error in ("forbidden", "runtime") and not r.passed
    if not fence:  # without the Python fence it is the network namespace that refuses
        assert r.isolation["net_namespace"] and "unreachable" in r.message.lower()
    still_works()


def test_reading_project_files_is_blocked():
    r = run_code(f"open({os.path.abspath(__file__)!r}).read()\n", [], limits=FAST)
    assert r.error == "forbidden"


def test_code_verifier():
    problem = Problem(id="c", prompt="Write add.", meta={"tests": ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]})
    response = "Here it is:\n```python\n" + GOOD + "```\n"
    assert extract_code(response) == GOOD
    assert asyncio.run(CodeVerifier(limits=FAST)(problem, response)) == 0.0
    assert asyncio.run(CodeVerifier(limits=FAST, partial=True)(problem, response)) == 0.5
    assert asyncio.run(CodeVerifier()(Problem(id="x", prompt="?"), response)) is None


def test_runs_leave_the_event_loop_free_and_the_pool_bounded():
    """Runs wait in the verifier's pool of ``workers`` threads: the loop keeps ticking meanwhile (generation
    goes on), and no more than ``workers`` run at once."""
    slow = "import time\ndef add(a, b):\n    time.sleep(0.5)\n    return a + b\n"
    problem = Problem(id="s", prompt="Write add.", meta={"tests": ["assert add(1, 2) == 3"]})
    verifier = CodeVerifier(limits=FAST, workers=2)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        t0 = asyncio.get_running_loop().time()
        scores = await asyncio.gather(*(verifier(problem, slow) for _ in range(4)))
        wall = asyncio.get_running_loop().time() - t0
        task.cancel()
        return scores, ticks, wall

    scores, ticks, wall = asyncio.run(main())
    assert scores == [1.0] * 4
    assert ticks >= wall / 0.01 * 0.5  # the loop ran throughout
    assert wall >= 2 * 0.5  # four half-second runs, two at a time: at least two rounds
