"""The code sandbox: hostile programs are contained and reported, and the next run still works; what the
solution sees; the refusal when the boundary cannot be set up; the verdict channel's rules.

The attacks of issue 24 are in tests/test_sandbox_attacks.py. Tests that run code skip, with the reason,
only where bubblewrap cannot set the boundary up (CI installs it through scripts/setup.sh)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest

from treepref.problems import Problem
from treepref.verifiers import sandbox
from treepref.verifiers.sandbox import (GRACE_S, INSIDE_UID, CodeVerifier, Limits, SandboxUnavailable, _uid_processes,
                                        boundary_missing, clean_text, extract_code, run_code, verdict_line)

FAST = Limits(cpu_s=1, wall_s=4, memory_mb=256, nproc=8)
GOOD = "def add(a, b):\n    return a + b\n"
MISSING = boundary_missing()
needs_boundary = pytest.mark.skipif(MISSING is not None, reason=f"no sandbox boundary here: {MISSING}")


def still_works():
    r = run_code(GOOD, ["assert add(1, 2) == 3"], limits=FAST)
    assert r.passed and r.error is None, r


@needs_boundary
def test_passing_and_failing_tests():
    r = run_code(GOOD, ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(0, 0) == 0"], limits=FAST)
    assert not r.passed and r.failed == [1] and r.error is None and r.pass_rate == pytest.approx(2 / 3)
    r = run_code("def f(:\n", ["assert True"], limits=FAST)
    assert r.error == "syntax" and r.failed == [0]
    r = run_code("raise ValueError('boom')", [], limits=FAST)
    assert r.error == "runtime" and "boom" in r.message


@needs_boundary
def test_infinite_loop_times_out():
    r = run_code("while True:\n    pass\n", ["assert True"], limits=FAST)
    assert r.error == "timeout" and not r.passed
    still_works()


@needs_boundary
def test_fork_bomb_is_contained():
    r = run_code("import os\nwhile True:\n    os.fork()\n", [], limits=FAST)
    assert r.error in ("process_limit", "timeout", "killed") and not r.passed
    if r.isolation["fresh_uid"]:  # every process it left behind was killed
        assert _uid_processes(r.isolation["uid"]) == []
    still_works()


@needs_boundary
def test_huge_allocation_is_refused():
    r = run_code("x = bytearray(10 * 2**30)\n", [], limits=FAST)
    assert r.error == "memory"
    still_works()


@needs_boundary
@pytest.mark.parametrize("fence", [True, False])
def test_writing_outside_is_blocked(fence):
    for target in (f"/tmp/treepref-escape-{uuid.uuid4().hex}.txt", f"/work/treepref-escape-{uuid.uuid4().hex}",
                   f"/usr/lib/treepref-escape-{uuid.uuid4().hex}"):
        r = run_code(f"open({target!r}, 'w').write('x')\nassert False\n", [], limits=FAST, python_fence=fence)
        assert r.error in ("forbidden", "runtime"), r
        assert not os.path.exists(target)  # the sandbox's /tmp is its own; /work is not there; /usr is read-only
    r = run_code("open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'\n", [],
                 limits=FAST)
    assert r.error is None  # the sandbox folder itself is writable
    still_works()


@needs_boundary
@pytest.mark.parametrize("fence", [True, False])
def test_socket_is_blocked(fence):
    code = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\n"
    r = run_code(code, [], limits=FAST, python_fence=fence)
    assert r.error in ("forbidden", "runtime") and not r.passed
    if not fence:  # without the Python fence it is the network namespace that refuses
        assert r.isolation["net_namespace"] and "unreachable" in r.message.lower(), r
    still_works()


@needs_boundary
def test_reading_project_files_is_blocked():
    r = run_code(f"open({os.path.abspath(__file__)!r}).read()\n", [], limits=FAST)
    assert r.error == "forbidden"
    r = run_code(f"open({os.path.abspath(__file__)!r}).read()\n", [], limits=FAST, python_fence=False)
    assert r.error == "runtime" and "No such file" in r.message  # the project is not in the sandbox at all


@needs_boundary
def test_code_verifier():
    problem = Problem(id="c", prompt="Write add.", meta={"tests": ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]})
    response = "Here it is:\n```python\n" + GOOD + "```\n"
    assert extract_code(response) == GOOD
    assert asyncio.run(CodeVerifier(limits=FAST)(problem, response)) == 0.0
    assert asyncio.run(CodeVerifier(limits=FAST, partial=True)(problem, response)) == 0.5
    assert asyncio.run(CodeVerifier()(Problem(id="x", prompt="?"), response)) is None


@needs_boundary
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


# ---- what the solution sees
SEES = '''
import os, socket
def root_entries():
    return sorted(os.listdir("/"))
def processes():
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
def ids():
    return [os.getuid(), os.geteuid(), os.getgid()]
def environment():
    return dict(os.environ)
def hostname():
    return socket.gethostname()
def folders():
    return [os.getcwd(), sorted(os.listdir(".")), sorted(os.listdir("/tmp")), sorted(os.listdir("/dev/shm"))]
def capabilities():
    with open("/proc/self/status") as f:
        return [line.split()[1] for line in f if line.startswith(("CapEff", "CapPrm", "NoNewPrivs"))]
def writable(path):
    try:
        with open(path, "w"):
            return True
    except OSError:
        return False
'''


@needs_boundary
def test_what_the_solution_sees():
    """Only the runtime and its own folders; only its own processes; uid 65534 with no capabilities and no
    new privileges; no variable of ours; read-only everywhere but its three private folders."""
    tests = [
        "assert set(root_entries()) <= {'sandbox', 'tmp', 'dev', 'proc', 'usr', 'lib', 'lib64', 'bin', 'etc'}",
        "assert not {'root', 'home', 'work', 'opt', 'var', 'srv', 'mnt', 'run'} & set(root_entries())",
        "assert len(processes()) <= 2",  # bwrap's init and the worker itself
        f"assert ids() == [{INSIDE_UID}, {INSIDE_UID}, {INSIDE_UID}]",
        "assert set(environment()) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'PWD'}",
        "assert hostname() == 'sandbox'",
        "assert folders() == ['/sandbox', [], [], []]",
        "assert capabilities() == ['0000000000000000', '0000000000000000', '1']",
        "assert [writable(p) for p in ('/sandbox/x', '/tmp/x', '/dev/shm/x')] == [True, True, True]",
        "assert [writable(p) for p in ('/x', '/usr/lib/x', '/proc/x', '/dev/x')] == [False] * 4",
    ]
    r = run_code(SEES, tests, limits=FAST, python_fence=False)
    assert r.passed, [t for t in r.tests if not t["ok"]]
    assert r.isolation["boundary"] == "bwrap" and r.isolation["uid"] != 0
    assert not any(os.path.exists(f"/{p}/x") for p in ("sandbox", "x"))


@needs_boundary
def test_nothing_persists_between_runs():
    leave = "import os\nfor d in ('.', '/tmp', '/dev/shm'):\n    open(os.path.join(d, 'left-behind'), 'w').write('x')\n"
    assert run_code(leave + SEES, ["assert folders()[1:] == [['left-behind']] * 3"], limits=FAST,
                    python_fence=False).passed
    assert run_code(SEES, ["assert folders() == ['/sandbox', [], [], []]"], limits=FAST, python_fence=False).passed


@needs_boundary
def test_the_whole_run_is_bounded_in_time():
    """Tests that hang (a bad check module, or the harness kept busy) end at the wall-clock limit too."""
    r = run_code(GOOD, check="def check(candidate):\n    while True:\n        pass\n", entry_point="add", limits=FAST)
    assert not r.passed and r.error == "timeout"
    assert r.duration_s <= FAST.wall_s + GRACE_S + 1


@needs_boundary
def test_terminal_escapes_are_stripped():
    noisy = ("import sys\nprint('\\x1b[2J\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07 bell\\x07 back\\rspace\\x08')\n"
             "print('\\x1b[1;1H\\x9b2Jerr', file=sys.stderr)\n"
             "def add(a, b):\n    raise ValueError('\\x1b[2Jcleared')\n")
    r = run_code(noisy, ["assert add(1, 2) == 3"], limits=FAST)
    assert r.stdout == "red  bell backspace\n" and r.stderr == "err\n", (r.stdout, r.stderr)
    assert "\x1b" not in r.tests[0]["message"] and "cleared" in r.tests[0]["message"]
    assert clean_text("a\x1b[38;5;196mb\x1b]8;;http://x\x1b\\c\td\n") == "abc\td\n"


# ---- refusing, never degrading
def test_refuses_without_bubblewrap():
    """A missing tool (simulated: bwrap's path points at nothing) is one clear error, from ``run_code`` and
    from the verifier; no code runs."""
    with pytest.raises(SandboxUnavailable) as err:
        run_code(GOOD, ["assert add(1, 2) == 3"], limits=FAST, bwrap="/nonexistent/bwrap")
    message = str(err.value)
    assert "\n" not in message and "bubblewrap" in message and "apt-get install bubblewrap" in message
    problem = Problem(id="c", prompt="Write add.", meta={"tests": ["assert add(1, 2) == 3"]})
    verifier = CodeVerifier(limits=FAST, bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable):
        asyncio.run(verifier(problem, GOOD))
    with pytest.raises(SandboxUnavailable):
        verifier.require_boundary()
    assert "bubblewrap" in boundary_missing(bwrap="/nonexistent/bwrap")
    assert isinstance(err.value, ValueError)  # the CLI's one-line errors are ValueErrors


def test_refuses_when_namespaces_cannot_be_made():
    """A bwrap that cannot make namespaces (as in a container without user namespaces): refused, saying so."""
    if MISSING is not None:  # the interpreter itself is the problem here; the message says that instead
        pytest.skip(f"no sandbox boundary here: {MISSING}")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # one the sandbox's fresh uid can enter
        os.chmod(folder, 0o755)
        fake = os.path.join(folder, "bwrap")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        os.chmod(fake, 0o755)
        with pytest.raises(SandboxUnavailable, match="user namespaces") as err:
            run_code(GOOD, ["assert add(1, 2) == 3"], limits=FAST, bwrap=fake)
    assert "No permissions to create new namespace" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="the root-interpreter path needs root (as another user, the "
                    "sandbox runs as that user: tests/test_sandbox_attacks.py)")
@needs_boundary
def test_python_option_cannot_lift_the_worker_to_root():
    """An interpreter that only root can run is refused (it used to run the worker as root); one the fresh
    uid can run runs as that uid, never as root."""
    closed = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if sandbox._others_can_exec(closed):
        pytest.skip(f"{closed} is executable by others here: no root-only interpreter to try")
    with pytest.raises(SandboxUnavailable, match="never runs code as root"):
        run_code(GOOD, ["assert add(1, 2) == 3"], limits=FAST, python=closed)
    with pytest.raises(SandboxUnavailable):
        problem = Problem("c", "?", meta={"tests": ["assert add(1, 2) == 3"]})
        asyncio.run(CodeVerifier(limits=FAST, python=closed)(problem, GOOD))
    r = run_code(GOOD, ["assert add(1, 2) == 3"], limits=FAST, python=sandbox.sandbox_python(True))
    assert r.passed and r.isolation["fresh_uid"] and r.isolation["uid"] != 0


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"), reason="needs root and setpriv "
                    "to become another user")
def test_unprivileged_user_is_refused_a_closed_interpreter_too():
    closed = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    system = sandbox.sandbox_python(True)
    if sandbox._others_can_exec(closed) or MISSING is not None:
        pytest.skip("no root-only interpreter here, or no boundary")
    script = ("import sys; sys.path.insert(0, sys.argv[1])\nfrom treepref.verifiers.sandbox import run_code, "
              "SandboxUnavailable\ntry:\n    run_code('def f():\\n    return 1\\n', ['assert f() == 1'], "
              "python=sys.argv[2])\nexcept SandboxUnavailable as exc:\n    print('refused', exc)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["setpriv", f"--reuid={INSIDE_UID}", f"--regid={INSIDE_UID}", "--clear-groups", system,
                          "-c", script, root, closed], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused"), (out.stdout, out.stderr)


# ---- the verdict channel
def test_the_parent_accepts_exactly_one_authenticated_record():
    secret = os.urandom(32)
    verdict = {"load": {"ok": True}, "tests": [{"index": 0, "ok": True, "message": "", "kind": None}], "done": True,
               "n_tests": 1}
    good = verdict_line(verdict, secret)
    assert sandbox._read_verdict(good, secret) == verdict
    from treepref.verifiers import sandbox_child

    assert sandbox_child.verdict_line(verdict, secret) == good  # the harness's MAC is the standard HMAC
    bad = {
        "nothing": b"",
        "a second record": good + good,
        "trailing bytes": good + b"x",
        "no line end": good[:-1],
        "another run's secret": verdict_line(verdict, os.urandom(32)),
        "no MAC": json.dumps(verdict).encode() + b"\n",
        "not JSON": verdict_line(verdict, secret)[:65] + b"{nope\n",
        "a record of the wrong shape": verdict_line({"done": "yes", "tests": []}, secret),
        "a test twice": verdict_line(dict(verdict, tests=verdict["tests"] * 2), secret),
        "too large": b"0" * (sandbox.MAX_VERDICT + 1),
    }
    for name, data in bad.items():
        if name == "not JSON":  # re-MAC the broken body, so it is the parse that refuses it
            body = b"{nope"
            import hmac

            data = hmac.new(secret, body, "sha256").hexdigest().encode() + b" " + body + b"\n"
        with pytest.raises(ValueError, match="verdict"):
            sandbox._read_verdict(data, secret)


@needs_boundary
def test_a_broken_channel_is_a_failed_run_with_the_reason(monkeypatch):
    """Whatever reaches the parent besides one good record (here: a harness that writes its record twice)
    is a zero-reward run with ``error = "verdict"``, even when every test passed."""
    source = sandbox._child_source()
    twice = source.replace("        data = memoryview(verdict_line(out, secret))",
                           "        data = memoryview(verdict_line(out, secret) * 2)")
    assert twice != source
    monkeypatch.setattr(sandbox, "_child_source", lambda: twice)
    r = run_code(GOOD, ["assert add(1, 2) == 3"], limits=FAST)
    assert not r.passed and r.error == "verdict" and "2 lines" in r.message and r.pass_rate == 0.0
    monkeypatch.undo()
    still_works()
