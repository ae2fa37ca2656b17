"""Issue 24's attacks on the code sandbox: each scores 0 and leaves no file, process or socket behind, with
the audit hook and with the OS boundary alone, as the suite's user and (when that is root) as an
unprivileged one. The attacks themselves are in ``tests/sandbox_attacks.py``.

The stealing attacks are also run with no sandbox at all, to show they are real: there they pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_attacks import FAST, METHODS, attacks, control, problem_file, run_attack
from treepref.verifiers.sandbox import GRACE_S, INSIDE_UID, boundary_missing, sandbox_python

MISSING = boundary_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no sandbox boundary here: {MISSING}")
NAMES = list(attacks()) if MISSING is None else []
FENCES = [pytest.param(True, id="audit hook on"), pytest.param(False, id="OS boundary alone")]


def assert_held(r: dict) -> None:
    what = f"{r['name']} (uid {r['uid']}, fence {r['fence']}): {r}"
    assert not r["passed"] and r["pass_rate"] == 0.0, what
    assert r["files"] == [] and r["processes"] == [] and r["sockets"] == [] and r["connections"] == 0, what
    assert r["error"] != "verdict", what  # the solution never reaches the verdict channel at all
    # the run ends at the deadline (wall + grace); the rest is killing and reaping, slow on a loaded machine
    assert r["seconds"] <= r["wall_limit"] + GRACE_S + 5, what


@pytest.mark.parametrize("fence", FENCES)
@pytest.mark.parametrize("name", NAMES)
def test_attack_is_held(name, fence):
    assert_held(run_attack(name, fence))


@pytest.mark.parametrize("name", list(METHODS))
def test_the_stealing_attacks_pass_without_a_sandbox(name):
    assert control(name), f"{name}: the attack does not even work unsandboxed (a broken attack proves nothing)"


def _as_nobody(name: str, fence: bool) -> dict:
    here = Path(__file__).resolve().parent
    argv = ["setpriv", f"--reuid={INSIDE_UID}", f"--regid={INSIDE_UID}", "--clear-groups", sandbox_python(True),
            str(here / "sandbox_attacks.py"), name, "1" if fence else "0", problem_file()]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="the suite is not root (the tests above already ran as an unprivileged user) or has no "
                    "setpriv to become one")
@pytest.mark.parametrize("fence", FENCES)
@pytest.mark.parametrize("name", NAMES)
def test_attack_is_held_as_an_unprivileged_user(name, fence):
    r = _as_nobody(name, fence)
    assert r["uid"] == INSIDE_UID and r["sandbox_uid"] == INSIDE_UID
    assert_held(r)


def test_every_issue_class_has_an_attack():
    expected = ["relative dir_fd open", "guard state through gc", "guard state through traceback frames",
                "thread race on the guard", "/proc/<ppid>/fd writers", "root through the interpreter",
                "persistence in /tmp and /dev/shm, a daemon", "host sockets", "harness memory (a 16 MB answer)",
                "harness CPU (colliding hashes)", "disk filling", "StopIteration through map"]
    assert set(expected) <= set(NAMES)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
