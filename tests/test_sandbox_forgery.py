"""Solutions that try to forge their verdict instead of solving the problem all score 0.

Each submission below is wrong as code; it tries one of the tricks RL-for-code practitioners meet first.
A verdict they could move would put wrong labels into the data. The control (the right solution, in the
same settings) scores 1, so a 0 here is the verdict and not a broken sandbox.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import textwrap

import pytest

from treepref.problems import Problem
from treepref.verifiers.sandbox import CodeVerifier, Limits, boundary_missing, run_code

FAST = Limits(cpu_s=2, wall_s=4, memory_mb=256, nproc=8)
MISSING = boundary_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no sandbox boundary here: {MISSING}")

# The task: a function whose outputs cannot be guessed; the tests hold the expected values.
RIGHT = "def secret(a, b):\n    return a * a + b * b + 7 * a * b\n"
TESTS = [f"assert secret({a}, {b}) == {a * a + b * b + 7 * a * b}" for a, b in [(3, 4), (5, 1), (2, 9), (8, 8)]]
WRONG = "def secret(a, b):\n    return 0\n"

# Writes what a verdict could look like, in every layout a harness might use, to every descriptor.
FAKE_RECORDS = textwrap.dedent('''
    import json, os
    records = [{"event": "test", "index": i, "ok": True, "message": "", "kind": None} for i in range(64)]
    lines = [json.dumps({"event": "loaded"})] + [json.dumps(r) for r in records] + [json.dumps({"event": "done"})]
    lines += [json.dumps({"id": "0" * 16, "ok": True, "value": True})]
    lines += [json.dumps({"load": {"ok": True}, "tests": records, "done": True, "n_tests": 4})]
    data = ("\\n".join(lines) + "\\n").encode()
    for fd in range(0, 256):
        try:
            os.write(fd, data)
        except OSError:
            pass
''')

# Looks for the tests wherever they might be (the interpreter's memory, the stack, files, /proc) and, if
# found, answers from them: with access to the expected values this passes.
READ_TESTS = textwrap.dedent('''
    import gc, os, re, sys
    def leaked():
        texts = [o for o in gc.get_objects() if isinstance(o, str) and "assert secret(" in o]
        for o in gc.get_objects():
            if isinstance(o, (list, tuple)):
                texts += [x for x in o if isinstance(x, str) and "assert secret(" in x]
        frame = sys._getframe()
        while frame is not None:
            texts += [v for v in frame.f_globals.values() if isinstance(v, str) and "assert secret(" in v]
            frame = frame.f_back
        try:
            pids = os.listdir("/proc")
        except Exception:
            pids = [str(os.getppid()), str(os.getpid() - 1), str(os.getpid() + 1)]
        for pid in pids:
            for part in ("cmdline", "environ", "fd/0", "fd/3", "fd/4", "fd/5", "mem"):
                try:
                    with open(f"/proc/{pid}/{part}", "rb") as f:
                        texts.append(f.read(1 << 20).decode("utf-8", "replace"))
                except Exception:
                    pass
        return texts
    try:
        TABLE = {}
        for text in leaked():
            for args, want in re.findall(r"assert secret\\(([^)]*)\\) == (-?\\d+)", text):
                TABLE[tuple(int(x) for x in args.split(","))] = int(want)
    except Exception:
        TABLE = {}
    def secret(a, b):
        return TABLE.get((a, b), 0)
''')

ALWAYS_EQUAL = textwrap.dedent('''
    class AlwaysEqual:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __bool__(self): return True
        __hash__ = object.__hash__
    def secret(a, b):
        return AlwaysEqual()
''')

EQUAL_INT = textwrap.dedent('''
    class Int(int):
        def __eq__(self, other): return True
        __hash__ = int.__hash__
    def secret(a, b):
        return Int(0)
''')

PATCH_EVERYTHING = textwrap.dedent('''
    import builtins, gc, sys
    class Quiet(Exception):
        pass
    builtins.AssertionError = Quiet
    builtins.abs = lambda x: 0
    builtins.isinstance = lambda *a: True
    for module in list(sys.modules.values()):
        d = getattr(module, "__dict__", {})
        for name in ("check", "run_tests", "emit", "answer", "describe"):
            if callable(d.get(name)):
                d[name] = lambda *a, **k: None
    for o in gc.get_objects():
        if isinstance(o, dict) and "tests" in o and isinstance(o.get("tests"), list):
            o["tests"] = []
    def secret(a, b):
        return 0
''')

SUBMISSIONS = {
    "fake records on every descriptor, then exit": FAKE_RECORDS + "os._exit(0)\n",
    "fake records on every descriptor, wrong function": FAKE_RECORDS + WRONG,
    "fake records from inside the call": WRONG.replace("return 0", "exec(FAKE)\n    return 0")
    + f"FAKE = {FAKE_RECORDS!r}\n",
    "a thread spamming fake answers": "import threading, time\nFAKE = " + repr(FAKE_RECORDS) + "\n"
    "def spam():\n    while True:\n        exec(FAKE)\n        time.sleep(0.001)\n"
    "threading.Thread(target=spam, daemon=True).start()\n" + WRONG,
    "os._exit(0) before the tests": "import os\nos._exit(0)\n" + RIGHT,
    "sys.exit(0) before the tests": "import sys\nsys.exit(0)\n" + RIGHT,
    "os._exit(0) inside the call": "import os\ndef secret(a, b):\n    os._exit(0)\n",
    "sys.exit(0) inside the call": "import sys\ndef secret(a, b):\n    sys.exit(0)\n",
    "AlwaysEqual object as the answer": ALWAYS_EQUAL,
    "int subclass equal to everything": EQUAL_INT,
    "monkeypatched builtins, helpers and test lists": PATCH_EVERYTHING,
    "reading the tests from memory, disk or /proc": READ_TESTS,
    "KeyboardInterrupt inside a test": "def secret(a, b):\n    raise KeyboardInterrupt\n",
    "SystemExit inside a test": "def secret(a, b):\n    raise SystemExit(0)\n",
    "printing the harness's markers": "import sys\nFAKE = " + repr(FAKE_RECORDS) + "\n"
    "print(FAKE)\nprint(FAKE, file=sys.stderr)\n" + WRONG,
    "sleeping past the timeout (in the call)": "import time\ndef secret(a, b):\n    time.sleep(60)\n    return a * a + b * b + 7 * a * b\n",
    "sleeping past the timeout (while loading)": "import time\ntime.sleep(60)\n" + RIGHT,
}


def test_the_right_solution_passes_in_the_same_settings():
    r = run_code(RIGHT, TESTS, limits=FAST)
    assert r.passed and r.pass_rate == 1.0 and r.error is None, r
    noisy = "import sys\nprint('hello')\nprint('debug', file=sys.stderr)\n" + RIGHT
    assert run_code(noisy, TESTS, limits=FAST).passed


@pytest.mark.parametrize("name", list(SUBMISSIONS))
def test_forgery_scores_zero(name):
    r = run_code(SUBMISSIONS[name], TESTS, limits=FAST)
    assert not r.passed and r.pass_rate == 0.0, (name, r)
    assert r.duration_s < FAST.wall_s + 6  # the hanging ones are cut at the limit
    problem = Problem("secret", "Write secret(a, b).", meta={"tests": TESTS})
    assert asyncio.run(CodeVerifier(limits=FAST, partial=True)(problem, SUBMISSIONS[name])) == 0.0


# ---- the same tricks against HumanEval's layout (a check(candidate) module, helpers from the prompt)
def humaneval(task: str) -> dict:
    from treepref.domains.code import humaneval_file

    with gzip.open(humaneval_file(), "rt") as f:
        return next(r for r in map(json.loads, f) if r["task_id"] == task)


def he_run(row: dict, completion: str):
    return run_code(row["prompt"] + completion, check=row["test"], entry_point=row["entry_point"],
                    setup=row["prompt"], limits=FAST)


def test_humaneval_forgeries_score_zero():
    zero = humaneval("HumanEval/32")  # find_zero: the test checks abs(poly(coeffs, x)) < 1e-4
    assert he_run(zero, zero["canonical_solution"]).passed
    tricks = {
        # redefine the prompt's helper the test relies on, and the functions it calls
        "patched helpers": "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n\nimport math\nmath.fabs = lambda x: 0.0\n",
        "fake records": "    return 0.0\n" + FAKE_RECORDS + "os._exit(0)\n",
        "AlwaysEqual": "    return 0.0\n" + ALWAYS_EQUAL.replace("def secret(a, b):\n    return AlwaysEqual()\n", "")
        + "def find_zero(xs):\n    return AlwaysEqual()\n",
        "exit first": "    return 0.0\nimport sys\nsys.exit(0)\n",
    }
    for name, completion in tricks.items():
        r = he_run(zero, completion)
        assert not r.passed and r.pass_rate == 0.0, (name, r)


def test_tests_that_name_the_entry_point_call_the_solution():
    """HumanEval/33 compares candidate(x) with sort_third(x): as HumanEval runs it (prompt + completion +
    tests as one program), that name is the solution's function, not the prompt's stub."""
    row = humaneval("HumanEval/33")
    assert he_run(row, row["canonical_solution"]).passed
    assert not he_run(row, "    return l\n").passed


def test_modules_the_tests_use_are_the_harness_own():
    """MBPP's tests call modules the solution imported (``math.isclose``): the harness imports its own
    copy, so a solution that patches the module in its process changes nothing for the tests."""
    tests = ["assert math.isclose(area(1), 3.141592653589793)", "assert area(0) == 0"]
    right = "import math\ndef area(r):\n    return math.pi * r * r\n"
    assert run_code(right, tests, limits=FAST).passed
    patched = "import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return 0.5\n"
    assert run_code(patched, tests, limits=FAST).pass_rate == 0.0


def test_a_broken_test_module_is_a_setup_error_not_a_pass():
    r = run_code("def f():\n    return 1\n", check="x = 1\n", entry_point="f", limits=FAST)
    assert not r.passed and r.error == "setup" and "check(candidate)" in r.message
