"""Run model-written Python against tests without letting it touch the machine.

What each run gets (``run_code``):
  * a fresh interpreter (``python -I -S``: no user site, no environment variables, no site-packages, no
    script folder on ``sys.path``) with a scrubbed environment, started in a new session (process group)
    and working in a fresh temporary folder that is deleted afterwards;
  * resource limits set in the child before ``exec``: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS,
    so a huge allocation raises MemoryError), processes (RLIMIT_NPROC), file size (RLIMIT_FSIZE), open
    files (RLIMIT_NOFILE), no core dumps; plus a wall-clock timeout enforced by the parent;
  * when possible, a new network namespace (no interface is up, so no connection can be made at the OS
    level): ``unshare(CLONE_NEWNET)`` as root, ``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` otherwise;
  * when running as root: a *fresh unused uid* (and gid). RLIMIT_NPROC counts processes per real uid and
    does not apply to root at all, so without this a fork bomb is unbounded. A uid of its own also means
    the code cannot write anything it does not own (only world-writable places such as /tmp remain), cannot
    read 0700 folders such as /root, and every process it leaves behind (a fork bomb, a daemon that called
    setsid) can be killed afterwards with ``kill(-1, SIGKILL)`` from a helper running as that uid.
    The interpreter must then be executable by that uid (pyenv under /root is not), so a system Python is
    chosen (``sandbox_python``): model code sees only the standard library.
  * inside the interpreter, an audit hook (PEP 578), installed before the code runs, refuses: opening
    files outside the sandbox folder and the standard library (writes: outside the sandbox folder), listing
    or changing other folders, sockets, running programs (exec/spawn/system/Popen), and ctypes.

What is and is not guaranteed:
  * The OS-level measures (namespace, uid, rlimits, process-group and uid-wide kill) hold against any code.
  * The audit hook is a Python-level fence, not a security boundary: it is what keeps the sandboxed uid from
    *reading* world-readable files (e.g. this project's source) or writing to /tmp, and code that defeats
    it (a C extension, an interpreter bug) is only held by the OS-level measures above.
  * Not root and no user namespaces: no network namespace (the hook still blocks sockets), no uid change
    (RLIMIT_NPROC then counts all of the user's processes, so it is set to their current count + limit).
    The worker then shares the harness's uid: the harness makes itself non-dumpable so the worker cannot
    ptrace it or open its descriptors through /proc, and the hook refuses /proc; it could still kill it,
    which only fails the run.

Who decides the verdict (``treepref.verifiers.sandbox_child``): two processes per run. The *worker* is the
sandboxed interpreter above; it loads the solution and only answers calls to its functions, over a pair of
pipes. The *harness* is a second, trusted interpreter outside the sandbox that holds the tests: it runs them
with the solution's functions as proxies, turns every answer back into a plain value (so an object whose
``__eq__`` always says True cannot arrive), and writes the verdict to its own stdout, which the worker has
no descriptor of. The expected values never enter the worker. Whatever the solution does (exit before the
tests, crash, hang, patch builtins or the test helpers, print markers, write fake records to every
descriptor it holds) can only make its calls fail; ``tests/test_sandbox_forgery.py`` tries each.
"""

from __future__ import annotations

import functools
import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from treepref.problems import Problem

_CHILD = Path(__file__).with_name("sandbox_child.py")  # the worker's and the harness's program
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512  # address space, so it also bounds thread stacks and mmaps
    nproc: int = 16
    fsize_mb: int = 16
    nofile: int = 64


@dataclass
class SandboxResult:
    passed: bool
    n_tests: int
    failed: list[int]  # indices of failed (or never reached) tests
    error: str | None  # None | "syntax" | "runtime" | "timeout" | "memory" | "killed" | "file_size"
    #                      | "forbidden" | "process_limit" | "setup"
    message: str = ""
    returncode: int | None = None
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    isolation: dict = field(default_factory=dict)  # what this run actually got (net namespace, uid)
    tests: list[dict] = field(default_factory=list)  # per test, as the harness saw it: index, ok, message

    @property
    def pass_rate(self) -> float:
        return (self.n_tests - len(self.failed)) / self.n_tests if self.n_tests else float(self.passed)


# --------------------------------------------------------------------------------------------- the parent
def _others_can_exec(path: str) -> bool:
    """Whether a uid other than ours can execute ``path`` (every folder on the way searchable by others)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        d = os.path.dirname(path)
        while True:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
            if d == os.path.dirname(d):
                return True
            d = os.path.dirname(d)
    except OSError:
        return False


def sandbox_python(drop_privileges: bool) -> str:
    """The interpreter to run: ours, or when switching uid, the first one that uid can execute."""
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    if not drop_privileges:
        return candidates[0]
    for name in ("python3", "python"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found:
            candidates.append(found)
    for c in candidates:
        if c and _others_can_exec(c):
            return c
    raise RuntimeError("no Python interpreter is executable by an unprivileged uid; pass python=...")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


@lru_cache(maxsize=None)
def _probe(python: str, as_root: bool) -> dict:
    """Which isolation steps work here: try each once in a throwaway child."""
    found = {"net_namespace": False, "uid_drop": False}
    flags = CLONE_NEWNET if as_root else CLONE_NEWUSER | CLONE_NEWNET
    libc = _libc()

    def try_unshare():
        if libc.unshare(flags) != 0:
            raise OSError("unshare failed")

    def try_uid():
        os.setgroups([])
        os.setgid(2_000_000_001)
        os.setuid(2_000_000_001)

    for key, fn in (("net_namespace", try_unshare), ("uid_drop", try_uid)):
        if key == "uid_drop" and not as_root:
            continue
        try:
            subprocess.run([python, "-I", "-S", "-c", "pass"], preexec_fn=fn, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            found[key] = True
        except (subprocess.SubprocessError, OSError):
            pass
    return found


def _uid_processes(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid`` (zombies, already dead and awaiting their reaper, excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(status.get("Uid", "-1").split()[0]) == uid and status.get("State", "").split()[:1] not in (["Z"], ["X"]):
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid``: a forked helper takes that uid and signals -1 (all it may signal)."""
    for _ in range(10):
        if not _uid_processes(uid):
            return
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.01)


def _own_process_count() -> int:
    return len(_uid_processes(os.getuid()))


def _child_source() -> str:
    return _CHILD.read_text(encoding="utf-8")


def run_code(code: str, tests: Sequence[str] = (), *, check: str | None = None, entry_point: str | None = None,
             setup: str = "", limits: Limits = Limits(), python: str | None = None, block_fork: bool = False,
             python_fence: bool = True) -> SandboxResult:
    """Run ``code`` in the sandbox and test it from outside; see the module docstring.

    Tests come in one of two layouts. ``tests``: statements (MBPP's ``assert f(x) == y``), each one test;
    names they call that nothing else defines are the solution's functions. ``check``: a test module
    defining ``check(candidate)`` (HumanEval's), called with the solution's ``entry_point``; each top-level
    statement of its body that asserts on the candidate is a test. ``setup`` is trusted code the tests see
    (HumanEval's prompt with its helper functions; MBPP's ``test_setup_code``); the solution runs apart.

    ``block_fork``: also refuse ``os.fork`` in the audit hook. ``python_fence=False`` leaves the audit hook
    out, so tests can check what the OS-level measures hold on their own.
    """
    if check is not None and not entry_point:
        raise ValueError("a check module needs the entry_point it is called with")
    n_tests = len(tests)
    as_root = os.geteuid() == 0
    python = python or sandbox_python(as_root)
    caps = _probe(python, as_root)
    uid = random.randint(1_000_000, 2_000_000_000) if caps["uid_drop"] else None
    nproc = limits.nproc if uid is not None else _own_process_count() + limits.nproc
    net_flags = (CLONE_NEWNET if as_root else CLONE_NEWUSER | CLONE_NEWNET) if caps["net_namespace"] else 0
    libc = _libc() if net_flags else None
    isolation = {"net_namespace": bool(net_flags), "uid": uid, "python": python}

    root = tempfile.mkdtemp(prefix="treepref-sandbox-")
    solution = os.path.join(root, "solution.py")
    with open(solution, "w", encoding="utf-8") as f:
        f.write(code)
    if uid is not None:
        os.chown(root, uid, uid)
        os.chown(solution, uid, uid)
    os.chmod(root, 0o700)

    def preexec() -> None:
        os.setsid()
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize_mb * mb, limits.fsize_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if net_flags and libc.unshare(net_flags) != 0:
            raise OSError("unshare(CLONE_NEWNET) failed")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    stdout, stderr, harness_err = tempfile.TemporaryFile(), tempfile.TemporaryFile(), tempfile.TemporaryFile()
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    source = _child_source()
    start = time.monotonic()
    worker = harness = None
    verdict_text, harness_timed_out = "", False
    try:
        spec = {"root": root, "requests_fd": requests_r, "answers_fd": answers_w, "fence": python_fence,
                "no_fork": block_fork}
        try:
            worker = subprocess.Popen([python, "-I", "-S", "-c", source, "worker", json.dumps(spec)],
                                      stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=root, env=env,
                                      preexec_fn=preexec, pass_fds=(requests_r, answers_w), close_fds=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return SandboxResult(False, n_tests, list(range(n_tests)), "setup", str(exc), isolation=isolation)
        harness = subprocess.Popen([sys.executable, "-I", "-S", "-c", source, "harness"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=harness_err, pass_fds=(requests_w, answers_r),
                                   close_fds=True, start_new_session=True, env=env, cwd=tempfile.gettempdir())
        # pass_fds keeps the numbers: the harness holds the pipes' other ends under the same descriptors
        job = {"requests_fd": requests_w, "answers_fd": answers_r, "wall_s": limits.wall_s, "n_tests": n_tests,
               "tests": list(tests), "check": check, "entry_point": entry_point, "setup": setup}
        for fd in (requests_r, requests_w, answers_r, answers_w):
            os.close(fd)
        requests_r = requests_w = answers_r = answers_w = -1
        try:
            verdict_text = harness.communicate(json.dumps(job).encode(), timeout=limits.wall_s + 5)[0].decode(
                "utf-8", "replace")
        except subprocess.TimeoutExpired:  # the tests themselves hung: nothing passed
            harness_timed_out = True
            _kill_group(harness.pid)
            harness.wait()
        worker_done = worker.poll() is not None
    finally:
        for fd in (requests_r, requests_w, answers_r, answers_w):
            if fd >= 0:
                os.close(fd)
        if harness is not None and harness.poll() is None:
            _kill_group(harness.pid)
            harness.wait()
        if worker is not None:
            _kill_group(worker.pid)  # it and whatever it left in its process group
            worker.wait()
        if uid is not None:
            _kill_uid(uid)  # and any that left the group
        shutil.rmtree(root, ignore_errors=True)
    duration = time.monotonic() - start
    verdict = _verdict(verdict_text)
    return _summarise(verdict, n_tests, worker.returncode if worker_done else None, harness_timed_out, duration,
                      _read(stdout), _read(stderr), isolation, limits)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(f, limit: int = 4000) -> str:
    f.seek(0)
    return f.read(limit).decode("utf-8", "replace")


def _verdict(text: str) -> dict:
    """The harness's one line; anything else (it died, it was killed) is a verdict of nothing passed."""
    try:
        verdict = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"load": None, "tests": [], "done": False}
    return verdict if isinstance(verdict, dict) else {"load": None, "tests": [], "done": False}


def _summarise(verdict: dict, n_tests: int, returncode: int | None, harness_timed_out: bool, duration: float,
               stdout: str, stderr: str, isolation: dict, limits: Limits) -> SandboxResult:
    """Passed means: the harness finished and saw every test pass. The error names why not, for people;
    the worker's own reports can only make it worse."""
    records = verdict.get("tests") or []
    if verdict.get("done") and verdict.get("n_tests") is not None:
        n_tests = int(verdict["n_tests"])
    ok = {r["index"] for r in records if r.get("ok")}
    failed = [i for i in range(n_tests) if i not in ok]
    load = verdict.get("load") or {}
    kinds = [r.get("kind") for r in records if r.get("kind")]
    error, message = None, ""
    if harness_timed_out or "timeout" in kinds or load.get("kind") == "timeout":
        error, message = "timeout", f"wall-clock limit of {limits.wall_s}s"
    elif load.get("ok") is False and load.get("kind") != "killed":
        error, message = load.get("kind", "runtime"), load.get("message", "")
    elif verdict.get("setup_error"):  # the tests' own setup failed (a bad check module): nothing was tested
        error, message = "setup", verdict["setup_error"]
    elif load.get("kind") == "killed" or "killed" in kinds or not verdict.get("done"):
        error, message = _death(returncode, duration, limits)
    elif any(k in kinds for k in ("memory", "forbidden", "process_limit")):
        error = next(k for k in kinds if k in ("memory", "forbidden", "process_limit"))
    passed = bool(verdict.get("done")) and error is None and not failed
    tests = [{"index": r.get("index"), "ok": bool(r.get("ok")), "message": r.get("message", "")} for r in records]
    return SandboxResult(passed, n_tests, failed, error, message, returncode, duration, stdout, stderr, isolation,
                         tests)


def _death(returncode: int | None, duration: float, limits: Limits) -> tuple[str, str]:
    """Why the solution's process ended early, from how it ended."""
    if returncode is not None and returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL) and duration >= limits.cpu_s * 0.9:
            return "timeout", f"CPU limit of {limits.cpu_s}s ({signal.Signals(sig).name})"
        if sig == signal.SIGXFSZ:
            return "file_size", f"file size limit of {limits.fsize_mb} MB"
        return "killed", f"killed by {signal.Signals(sig).name}"
    return "killed", f"exited with status {returncode} before finishing"


# --------------------------------------------------------------------------------------------- verifier
def extract_code(text: str) -> str:
    """The code in a response: the last fenced block (```python preferred), else the whole text."""
    import re

    blocks = re.findall(r"```([\w+-]*)[^\n]*\n(.*?)```", text, re.DOTALL)
    if not blocks:
        return text
    py = [b for lang, b in blocks if lang.lower() in ("python", "py", "python3")]
    return (py or [b for _, b in blocks])[-1]


def layout_of(meta: dict, tests_key: str = "tests") -> dict | None:
    """``run_code``'s test keywords from a problem's meta (HumanEval: ``test`` + ``entry_point``, with the
    prompt's helpers as setup; MBPP and plain lists: ``tests`` statements, ``setup``), None without tests."""
    if meta.get("test") and meta.get("entry_point"):
        return {"check": meta["test"], "entry_point": meta["entry_point"], "setup": meta.get("setup", "")}
    tests = meta.get(tests_key)
    if not tests:
        return None
    return {"tests": [tests] if isinstance(tests, str) else list(tests), "setup": meta.get("setup", ""),
            "entry_point": meta.get("entry_point")}


@dataclass
class CodeVerifier:
    """``OutcomeVerifier`` for code: run the response's code against the problem's tests (``layout_of``).

    Returns 1.0 / 0.0 (all tests pass or not), or the share of tests passed with ``partial=True``; None when
    the problem has no tests. Runs go to a pool of ``workers`` threads (default: one per CPU), each waiting
    on its own sandboxed processes, so the event loop never blocks and generation goes on meanwhile.
    """

    limits: Limits = field(default_factory=Limits)
    tests_key: str = "tests"
    partial: bool = False
    python: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        self._pool = None

    async def run(self, problem: Problem, code: str) -> SandboxResult | None:
        """The sandbox's result for ``code`` on ``problem``'s tests (None: it has none)."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        layout = layout_of(problem.meta or {}, self.tests_key)
        if layout is None:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers or os.cpu_count() or 1,
                                            thread_name_prefix="treepref-sandbox")
        call = functools.partial(run_code, code, limits=self.limits, python=self.python, **layout)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def __call__(self, problem: Problem, response: str) -> float | None:
        result = await self.run(problem, extract_code(response))
        if result is None:
            return None
        # Tests never reached (after a crash or a timeout) count as failed, so pass_rate is already 0 there.
        return result.pass_rate if self.partial else float(result.passed)
