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
  * Test results travel back through an inherited file descriptor; code that wants to forge "passed" can
    write to it. This guards the machine against model code, not the reward against adversarial code.

Tests are Python statements (usually ``assert f(x) == y``) run one by one after the code, in its namespace.
"""

from __future__ import annotations

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
from typing import Sequence

from treepref.problems import Problem

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

    @property
    def pass_rate(self) -> float:
        return (self.n_tests - len(self.failed)) / self.n_tests if self.n_tests else float(self.passed)


# --------------------------------------------------------------------------------------------- the child
_RUNNER = r'''
import json, os, sys, sysconfig, traceback
spec = json.loads(sys.stdin.read())
MAIN = os.getpid()
out = os.fdopen(spec["fd"], "w", buffering=1)
def emit(**event):
    if os.getpid() == MAIN:
        out.write(json.dumps(event) + "\n")
ROOT = os.path.realpath(spec["root"])
READ = [ROOT] + sorted({os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")})
DEVICES = {"/dev/null", "/dev/urandom", "/dev/zero", "/dev/random"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
WRITE_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.setxattr", "os.removexattr",
                "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
                "shutil.rmtree", "shutil.make_archive", "shutil.unpack_archive"}
READ_EVENTS = {"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.getxattr", "os.listxattr"}
DENY_PREFIX = ("socket.", "ctypes.", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
               "subprocess.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "nntplib.",
               "telnetlib.", "webbrowser.", "os.fork" if spec["no_fork"] else "\0")
DENY_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess"}
class SandboxError(PermissionError):
    pass
def inside(path, roots):
    if isinstance(path, int):
        return True
    try:
        p = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return p in DEVICES or any(p == r or p.startswith(r + os.sep) for r in roots)
busy = False
def hook(event, args):
    global busy
    if busy:
        return
    busy = True
    try:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            if not inside(path, [ROOT] if writing else READ):
                raise SandboxError("sandbox: %s of %r is not allowed" % ("write" if writing else "read", path))
        elif event in WRITE_EVENTS:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a, [ROOT]):
                    raise SandboxError("sandbox: %s on %r is not allowed" % (event, a))
        elif event in READ_EVENTS:
            if args and isinstance(args[0], (str, bytes, os.PathLike)) and not inside(args[0], READ):
                raise SandboxError("sandbox: %s of %r is not allowed" % (event, args[0]))
        elif event == "import":
            if args and args[0] in DENY_IMPORTS:
                raise SandboxError("sandbox: import of %s is not allowed" % args[0])
        elif event.startswith(DENY_PREFIX):
            raise SandboxError("sandbox: %s is not allowed" % event)
    finally:
        busy = False
def kind(exc):
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, SandboxError):
        return "forbidden"
    if isinstance(exc, BlockingIOError):
        return "process_limit"
    return "runtime"
def describe(exc):
    return ("%s: %s" % (type(exc).__name__, exc))[:500]
if spec["fence"]:
    sys.addaudithook(hook)
try:
    code = compile(spec["code"], "<solution>", "exec")
except (SyntaxError, ValueError) as exc:
    emit(event="error", kind="syntax", message=describe(exc))
    os._exit(0)
ns = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(code, ns)
except SystemExit as exc:
    if exc.code not in (None, 0):
        if os.getpid() != MAIN:
            os._exit(1)
        emit(event="error", kind="runtime", message="SystemExit(%r)" % (exc.code,))
        os._exit(0)
except BaseException as exc:
    if os.getpid() != MAIN:
        os._exit(1)
    emit(event="error", kind=kind(exc), message=describe(exc))
    os._exit(0)
if os.getpid() != MAIN:
    os._exit(0)
emit(event="loaded")
for i, test in enumerate(spec["tests"]):
    try:
        exec(compile(test, "<test %d>" % i, "exec"), ns)
        ok, message, k = True, "", None
    except AssertionError as exc:
        ok, message, k = False, describe(exc), None
    except BaseException as exc:
        ok, message, k = False, describe(exc), kind(exc)
    if os.getpid() != MAIN:
        os._exit(0)
    emit(event="test", index=i, ok=ok, message=message, kind=k)
emit(event="done")
os._exit(0)
'''


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


def run_code(code: str, tests: Sequence[str] = (), *, limits: Limits = Limits(), python: str | None = None,
             block_fork: bool = False, python_fence: bool = True) -> SandboxResult:
    """Run ``code`` and then each test statement in a sandboxed interpreter; see the module docstring.

    ``block_fork``: also refuse ``os.fork`` in the audit hook. ``python_fence=False`` leaves the audit hook
    out, so tests can check what the OS-level measures hold on their own.
    """
    as_root = os.geteuid() == 0
    python = python or sandbox_python(as_root)
    caps = _probe(python, as_root)
    uid = random.randint(1_000_000, 2_000_000_000) if caps["uid_drop"] else None
    nproc = limits.nproc if uid is not None else _own_process_count() + limits.nproc
    net_flags = (CLONE_NEWNET if as_root else CLONE_NEWUSER | CLONE_NEWNET) if caps["net_namespace"] else 0
    libc = _libc() if net_flags else None
    isolation = {"net_namespace": bool(net_flags), "uid": uid, "python": python}

    root = tempfile.mkdtemp(prefix="treepref-sandbox-")
    if uid is not None:
        os.chown(root, uid, uid)
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
    results = tempfile.TemporaryFile()
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    spec = {"code": code, "tests": list(tests), "root": root, "fd": results.fileno(), "no_fork": block_fork,
            "fence": python_fence}
    start = time.monotonic()
    timed_out = False
    proc = None
    try:
        try:
            proc = subprocess.Popen([python, "-I", "-S", "-c", _RUNNER], stdin=subprocess.PIPE, stdout=stdout,
                                    stderr=stderr, cwd=root, env=env, preexec_fn=preexec,
                                    pass_fds=(results.fileno(),), close_fds=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return SandboxResult(False, len(tests), list(range(len(tests))), "setup", str(exc),
                                 isolation=isolation)
        try:
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers in its process group
            except (ProcessLookupError, PermissionError):
                pass
        if uid is not None:
            _kill_uid(uid)  # and any that left the group
        shutil.rmtree(root, ignore_errors=True)
    duration = time.monotonic() - start
    results.seek(0)
    events = []
    for line in results.read().decode("utf-8", "replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return _summarise(events, len(tests), proc.returncode, timed_out, duration, _read(stdout), _read(stderr),
                      isolation, limits)


def _read(f, limit: int = 4000) -> str:
    f.seek(0)
    return f.read(limit).decode("utf-8", "replace")


def _summarise(events: list[dict], n_tests: int, returncode: int, timed_out: bool, duration: float,
               stdout: str, stderr: str, isolation: dict, limits: Limits) -> SandboxResult:
    ok = {e["index"] for e in events if e.get("event") == "test" and e.get("ok")}
    failed = [i for i in range(n_tests) if i not in ok]
    done = any(e.get("event") == "done" for e in events)
    errors = [e for e in events if e.get("event") == "error"]
    test_kinds = [e.get("kind") for e in events if e.get("event") == "test" and e.get("kind")]
    error, message = None, ""
    if errors:
        error, message = errors[0].get("kind", "runtime"), errors[0].get("message", "")
    elif timed_out:
        error, message = "timeout", f"wall-clock limit of {limits.wall_s}s"
    elif returncode is not None and returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL) and duration >= limits.cpu_s * 0.9:
            error, message = "timeout", f"CPU limit of {limits.cpu_s}s ({signal.Signals(sig).name})"
        elif sig == signal.SIGXFSZ:
            error, message = "file_size", f"file size limit of {limits.fsize_mb} MB"
        else:
            error, message = "killed", f"killed by {signal.Signals(sig).name}"
    elif not done:
        error, message = "killed", f"exited with status {returncode} before finishing"
    elif "memory" in test_kinds or "forbidden" in test_kinds or "process_limit" in test_kinds:
        error = next(k for k in test_kinds if k in ("memory", "forbidden", "process_limit"))
    passed = error is None and done and not failed
    return SandboxResult(passed, n_tests, failed, error, message, returncode, duration, stdout, stderr, isolation)


# --------------------------------------------------------------------------------------------- verifier
def extract_code(text: str) -> str:
    """The code in a response: the last fenced block (```python preferred), else the whole text."""
    import re

    blocks = re.findall(r"```([\w+-]*)[^\n]*\n(.*?)```", text, re.DOTALL)
    if not blocks:
        return text
    py = [b for lang, b in blocks if lang.lower() in ("python", "py", "python3")]
    return (py or [b for _, b in blocks])[-1]


@dataclass
class CodeVerifier:
    """``OutcomeVerifier`` for code: run the response's code against ``problem.meta[tests_key]``.

    Returns 1.0 / 0.0 (all tests pass or not), or the share of tests passed with ``partial=True``; None when
    the problem has no tests. The sandbox is synchronous, so it runs in a worker thread.
    """

    limits: Limits = field(default_factory=Limits)
    tests_key: str = "tests"
    partial: bool = False
    python: str | None = None

    async def __call__(self, problem: Problem, response: str) -> float | None:
        import asyncio

        tests = problem.meta.get(self.tests_key)
        if not tests:
            return None
        if isinstance(tests, str):
            tests = [tests]
        result = await asyncio.to_thread(run_code, extract_code(response), list(tests), limits=self.limits,
                                         python=self.python)
        # Tests never reached (after a crash or a timeout) count as failed, so pass_rate is already 0 there.
        return result.pass_rate if self.partial else float(result.passed)
