"""Run model-written Python against tests behind an operating-system boundary it cannot cross.

The threat model is in ``docs/sandbox.md``; in short, per run (``run_code``):

  * **The worker** (the solution's interpreter, untrusted) runs under bubblewrap (``bwrap``, Debian package
    ``bubblewrap``) in fresh user, mount, PID, network, IPC, UTS and cgroup namespaces. Its file system is
    an empty read-only root holding only the Python runtime it needs, bound read-only (the interpreter
    file, its standard library with any site-packages folder masked, the shared libraries they load): none
    of the project, the virtualenv, datasets, /root or /home. It works in ``/sandbox``, a private tmpfs
    of ``Limits.disk_mb`` (the disk limit), with private size-limited tmpfs at /tmp and /dev/shm; all three
    vanish with the mount namespace. It sees only its own processes in /proc, has no network interface
    and no host socket file or abstract socket, runs as uid 65534 inside with no capabilities, no new
    privileges and no nested user namespaces, and every process it makes dies with the namespace.
  * **Its uid outside**: when we are root, a fresh unused uid (and gid) is taken before bwrap starts, so
    the kernel sees an unprivileged stranger whatever ``python=`` names (an interpreter that uid cannot
    run is refused, never run as root); otherwise our own uid, mapped in its own user namespace.
  * **Resource limits** (rlimits, set before bwrap starts and inherited; ``_LAUNCH`` sets them): CPU
    seconds, address space, processes, file size, open files, no core dumps; and one wall-clock deadline
    for the whole run.
  * **The harness** (trusted, outside the sandbox) holds the tests and runs them with the solution's
    functions as proxies; only plain builtin values cross back (``sandbox_child``). It runs with its own
    memory, CPU and file-size limits, and an answer over ``Limits.answer_kb`` fails the call.
  * **The verdict** travels on the harness's stdout, a pipe that exists only between it and us (never in
    the sandbox's namespaces), as exactly one line authenticated with a per-run secret the sandbox never
    sees (HMAC-SHA256). A second line, trailing bytes, a bad MAC or a malformed record is a failed run
    with ``error = "verdict"`` and the reason in ``message``.
  * **Refuse, never degrade**: if bwrap is missing or cannot set the boundary up here (no user namespaces,
    an interpreter the unprivileged uid cannot run), ``SandboxUnavailable`` says what is missing and how
    to get it; no code ever runs with less isolation.

The Python audit hook of ``sandbox_child.install_fence`` stays as a second layer; nothing relies on it.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import random
import re
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
WORKDIR = "/sandbox"  # the solution's working folder, inside the sandbox
INSIDE_UID = 65534  # what the solution sees as its uid and gid ("nobody")
GRACE_S = 2.0  # process start-up allowed on top of Limits.wall_s
MAX_VERDICT = 8 * 1024 * 1024  # bytes of the harness's one verdict line
INSTALL = ("install bubblewrap: `apt-get install bubblewrap` on Debian/Ubuntu (scripts/setup.sh does it when "
           "run as root), `dnf install bubblewrap` on Fedora")


class SandboxUnavailable(ValueError):
    """The OS-level boundary cannot be set up here; the message names what is missing and how to get it.
    (A ``ValueError``, like a missing extra: the CLI reports it in one line.)"""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 5  # CPU seconds of each sandboxed process
    wall_s: float = 10.0  # the whole run, tests included (plus GRACE_S for starting the processes)
    memory_mb: int = 512  # address space, so it also bounds thread stacks and mmaps
    nproc: int = 16
    fsize_mb: int = 16  # one file, and what the worker may print (its stdout and stderr are files)
    nofile: int = 64
    disk_mb: int = 16  # each private tmpfs: the working folder, /tmp and /dev/shm
    answer_kb: int = 1024  # one answer of the solution; a larger one fails the call
    harness_cpu_s: int = 10
    harness_memory_mb: int = 512


@dataclass
class SandboxResult:
    passed: bool
    n_tests: int
    failed: list[int]  # indices of failed (or never reached) tests
    error: str | None  # None | "syntax" | "runtime" | "timeout" | "memory" | "killed" | "file_size"
    #                      | "forbidden" | "process_limit" | "answer_size" | "setup" | "verdict"
    message: str = ""
    returncode: int | None = None
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    isolation: dict = field(default_factory=dict)  # what this run got (boundary, uids, interpreter)
    tests: list[dict] = field(default_factory=list)  # per test, as the harness saw it: index, ok, message
    harness_stderr: str = ""  # what the tests printed, and the harness's own errors

    @property
    def pass_rate(self) -> float:
        return (self.n_tests - len(self.failed)) / self.n_tests if self.n_tests else float(self.passed)


# --------------------------------------------------------------------------------------------- text
_ESCAPES = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL/ST (titles, hyperlinks)
                      r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS, PM, APC, SOS strings
                      r"|\x1b\[[0-?]*[ -/]*[@-~]?"  # CSI (colours, cursor moves, erase)
                      r"|\x1b[ -/]*[0-~]?"  # other ESC sequences
                      r"|\x9b[0-?]*[ -/]*[@-~]?"  # 8-bit CSI
                      r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every other control character but \t and \n


def clean_text(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (tabs and newlines kept)."""
    return _ESCAPES.sub("", text)


# --------------------------------------------------------------------------------------------- the boundary
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
    """The interpreter the worker runs: ours, or when a fresh uid runs it, the first one it can execute."""
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    if not drop_privileges:
        return os.path.realpath(candidates[0])
    for name in ("python3", "python"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found:
            candidates.append(found)
    for c in candidates:
        if c and _others_can_exec(c):
            return os.path.realpath(c)
    raise SandboxUnavailable("no Python interpreter is executable by an unprivileged uid (the sandbox never "
                             "runs code as root): install a system Python (apt-get install python3) or pass "
                             "python=/usr/bin/python3")


_RUNTIME_PROBE = r"""
import json, os, sys, sysconfig
paths = [p for p in sys.path if os.path.isdir(p)]
paths += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib") if os.path.isdir(sysconfig.get_paths()[k])]
libs = [os.path.join(p, f) for p in paths for f in os.listdir(p) if f.endswith(".so")]
print(json.dumps({"executable": os.path.realpath(sys.executable), "paths": paths, "libs": libs,
                  "version": sys.version.split()[0]}))
"""


def _symlinks_and_real(path: str, links: dict) -> str:
    """``path`` with every symlink on the way resolved; each symlinked folder is noted in ``links`` (the
    sandbox gets the same link, so a loader path such as /lib64/ld-linux-x86-64.so.2 still works)."""
    parts = Path(os.path.abspath(path)).parts
    current = "/"
    for part in parts[1:]:
        nxt = os.path.join(current, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            resolved = os.path.realpath(nxt)
            if os.path.isdir(resolved) and nxt not in links:
                links[nxt] = target
            current = resolved
        else:
            current = nxt
    return current


@lru_cache(maxsize=None)
def runtime_mounts(python: str) -> tuple[tuple[str, ...], str]:
    """What the sandbox binds read-only for ``python``: (bwrap arguments, the interpreter's real path).

    The interpreter file, its ``sys.path`` folders (the standard library and its extension modules) with
    any site-packages/dist-packages folder masked, and the folders of the shared libraries ``ldd`` says the
    interpreter and those extension modules load."""
    try:
        out = subprocess.run([python, "-I", "-S", "-c", _RUNTIME_PROBE], capture_output=True, timeout=60,
                             check=True, stdin=subprocess.DEVNULL).stdout
        info = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxUnavailable(f"cannot run the sandbox's Python {python!r} ({exc}); pass python= an "
                                 "interpreter such as /usr/bin/python3") from None
    exe = info["executable"]
    libs: set[str] = set()
    ldd = shutil.which("ldd")
    if ldd:
        files = [exe] + info["libs"]
        for i in range(0, len(files), 64):
            text = subprocess.run([ldd, *files[i:i + 64]], capture_output=True, text=True, timeout=60).stdout
            libs.update(m for m in re.findall(r"(?:=>\s*|^\s+)(/\S+)\s+\(0x", text, re.M))
    else:  # no ldd: the usual library folders
        libs.update(os.path.join(d, "x") for d in ("/lib", "/lib64", "/usr/lib", "/usr/lib64") if os.path.isdir(d))
    links: dict[str, str] = {}
    folders = {_symlinks_and_real(os.path.dirname(p), links) for p in libs}
    folders |= {_symlinks_and_real(p, links) for p in info["paths"]}
    exe_real = _symlinks_and_real(exe, links)
    kept: list[str] = []
    for d in sorted(folders, key=len):  # a folder inside one already bound needs no bind of its own
        if not any(d == k or d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    args: list[str] = []
    for d in kept:
        args += ["--ro-bind", d, d]
    if not any(exe_real.startswith(k.rstrip("/") + "/") for k in kept):
        args += ["--ro-bind", exe_real, exe_real]
    for d in kept:  # installed packages are not the standard library: an empty read-only folder over them
        for name in ("site-packages", "dist-packages"):
            p = os.path.join(d, name)
            if os.path.isdir(p) and not os.path.islink(p):
                args += ["--size", "4096", "--tmpfs", p, "--remount-ro", p]
    for link, target in sorted(links.items(), key=lambda kv: len(kv[0])):
        if not any(link == k or link.startswith(k.rstrip("/") + "/") for k in kept):
            args += ["--symlink", target, link]
    return tuple(args), exe_real


def _find_bwrap(bwrap: str | None) -> str:
    """bubblewrap's path: given, else ``$TREEPREF_BWRAP``, else found on PATH."""
    path = bwrap or os.environ.get("TREEPREF_BWRAP") or shutil.which("bwrap") or "/usr/bin/bwrap"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SandboxUnavailable(f"the code sandbox needs bubblewrap, and {path} is not an executable file: "
                                 + INSTALL)
    return path


def _sandbox_argv(bwrap: str, mounts: tuple[str, ...], limits: Limits) -> list[str]:
    """bwrap's command line up to (not including) the program it runs."""
    size = str(limits.disk_mb * 1024 * 1024)
    return [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--hostname", "sandbox",
            *mounts, "--proc", "/proc", "--dev", "/dev",
            "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/dev/shm",
            "--size", size, "--tmpfs", WORKDIR, "--chdir", WORKDIR, "--remount-ro", "/dev", "--remount-ro", "/",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORKDIR,
            "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8", "--setenv", "LC_ALL", "C.UTF-8", "--"]


def _fresh_uid() -> int:
    """A uid (and gid) no process or file of this machine uses: the sandbox's owner as the kernel sees it."""
    while True:
        uid = random.randint(1_000_000, 2_000_000_000)
        if not _uid_processes(uid):
            return uid


# What a run's two processes do between their start and the program they run: a new session, their rlimits,
# and for the worker the drop to its uid (a uid number, or ``self`` to keep ours; either way never root) or no
# change (``keep``: the harness, which is ours). A small interpreter does it and then execs the program,
# instead of a ``preexec_fn``: that rules out ``vfork``, and a fork copies the page tables of the process that
# forks, so a run that held a model paid for them twice per verdict (2.5x slower with 3 GB resident; HumanEval's
# 328 verdicts took 77 s inside the test suite against 20 s alone).
_LAUNCH = """import os, resource, sys
os.setsid()
n = int(sys.argv[1])
for i in range(n):
    kind, soft, hard = (int(x) for x in sys.argv[2 + 3 * i:5 + 3 * i])
    resource.setrlimit(kind, (soft, hard))
who = sys.argv[2 + 3 * n]
if who not in ("keep", "self"):
    os.setgroups([])
    os.setgid(int(who))
    os.setuid(int(who))
if who != "keep" and (os.geteuid() == 0 or os.getuid() == 0):
    sys.exit("the sandbox would run as root")
os.execv(sys.argv[3 + 3 * n], sys.argv[3 + 3 * n:])
"""


def _launched(argv: list[str], limits: Sequence[tuple[int, int, int]], who: str) -> list[str]:
    """``argv`` started through ``_LAUNCH`` with these ``(rlimit, soft, hard)`` and uid rule (see there)."""
    flat = [str(v) for limit in limits for v in limit]
    return [sys.executable, "-I", "-S", "-c", _LAUNCH, str(len(limits)), *flat, who, *argv]


@lru_cache(maxsize=None)
def _probe(bwrap: str, python: str, as_root: bool) -> tuple[tuple[str, ...], str]:
    """Set the boundary up once with a trivial program; raise ``SandboxUnavailable`` saying why it fails."""
    if as_root and not _others_can_exec(python):
        raise SandboxUnavailable(f"the sandbox's Python {python} is not executable by an unprivileged uid (a "
                                 "folder on its path is closed to others, e.g. /root); the sandbox never runs "
                                 "code as root: pass python=/usr/bin/python3 or another system interpreter")
    mounts, exe = runtime_mounts(python)
    argv = _sandbox_argv(bwrap, mounts, Limits()) + [exe, "-I", "-S", "-c",
                                                      "import os; print(os.getuid(), len(os.listdir('/proc')))"]
    try:
        r = subprocess.run(_launched(argv, [], str(_fresh_uid()) if as_root else "self"), capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"bubblewrap ({bwrap}) could not start: {exc}") from None
    if r.returncode != 0 or not r.stdout.startswith(f"{INSIDE_UID} "):
        why = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise SandboxUnavailable(f"bubblewrap ({bwrap}) could not set up the code sandbox here: {why}. It needs "
                                 "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 and "
                                 "user.max_user_namespaces > 0; in a container, a seccomp/AppArmor profile that "
                                 "allows unshare)")
    return mounts, exe


def require_boundary(python: str | None = None, bwrap: str | None = None) -> dict:
    """Check that the boundary can be set up (once per interpreter): what it will be, or
    ``SandboxUnavailable``. Cheap after the first call; ``run_code`` calls it before every run."""
    as_root = os.geteuid() == 0
    bwrap = _find_bwrap(bwrap)
    python = os.path.realpath(python) if python else sandbox_python(as_root)
    mounts, exe = _probe(bwrap, python, as_root)
    return {"bwrap": bwrap, "python": exe, "mounts": mounts, "as_root": as_root}


def boundary_missing(python: str | None = None, bwrap: str | None = None) -> str | None:
    """Why the boundary cannot be set up here (for a test's skip reason), or None when it can."""
    try:
        require_boundary(python, bwrap)
    except SandboxUnavailable as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------------- processes
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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid``: a forked helper takes that uid and signals -1 (all it may signal)."""
    for _ in range(50):
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


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _end_sandbox(worker: subprocess.Popen, uid: int | None) -> None:
    """Kill bwrap and its namespace's first process (the kernel then kills every process in that PID
    namespace) and wait until they are gone, so a run leaves no process behind."""
    inner = _children(worker.pid) if worker.poll() is None else []
    _kill_group(worker.pid)
    for pid in inner:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    worker.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in inner) and time.monotonic() < deadline:
        time.sleep(0.005)
    if uid is not None:
        _kill_uid(uid)  # anything that would have left the namespace (nothing can; belt and braces)


def _own_process_count() -> int:
    return len(_uid_processes(os.getuid()))


def _child_source() -> str:
    return _CHILD.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- a run
def run_code(code: str, tests: Sequence[str] = (), *, check: str | None = None, entry_point: str | None = None,
             setup: str = "", limits: Limits = Limits(), python: str | None = None, block_fork: bool = False,
             python_fence: bool = True, bwrap: str | None = None) -> SandboxResult:
    """Run ``code`` in the sandbox and test it from outside; see the module docstring.

    Tests come in one of two layouts. ``tests``: statements (MBPP's ``assert f(x) == y``), each one test;
    names they call that nothing else defines are the solution's functions. ``check``: a test module
    defining ``check(candidate)`` (HumanEval's), called with the solution's ``entry_point``; each top-level
    statement of its body that asserts on the candidate is a test. ``setup`` is trusted code the tests see
    (HumanEval's prompt with its helper functions; MBPP's ``test_setup_code``); the solution runs apart.

    ``python``: the worker's interpreter (default: a system Python the sandbox's uid can run); ``bwrap``:
    bubblewrap's path (default: found on PATH). Raises ``SandboxUnavailable`` when the boundary cannot be
    set up. ``block_fork``: also refuse ``os.fork`` in the audit hook. ``python_fence=False`` leaves the
    audit hook out, so tests can check what the OS-level boundary holds on its own.
    """
    if check is not None and not entry_point:
        raise ValueError("a check module needs the entry_point it is called with")
    n_tests = len(tests)
    boundary = require_boundary(python, bwrap)
    as_root = boundary["as_root"]
    uid = _fresh_uid() if as_root else None
    nproc = limits.nproc if uid is not None else _own_process_count() + limits.nproc
    isolation = {"boundary": "bwrap", "bwrap": boundary["bwrap"], "python": boundary["python"],
                 "uid": uid if uid is not None else os.getuid(), "fresh_uid": uid is not None,
                 "uid_inside": INSIDE_UID, "net_namespace": True, "pid_namespace": True}
    mb = 1024 * 1024
    worker_limits = [(resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
                     *((kind, v, v) for kind, v in ((resource.RLIMIT_AS, limits.memory_mb * mb),
                                                    (resource.RLIMIT_FSIZE, limits.fsize_mb * mb),
                                                    (resource.RLIMIT_NOFILE, limits.nofile),
                                                    (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)))]
    harness_limits = [(resource.RLIMIT_CPU, limits.harness_cpu_s, limits.harness_cpu_s + 1),
                      *((kind, v, v) for kind, v in ((resource.RLIMIT_AS, limits.harness_memory_mb * mb),
                                                     (resource.RLIMIT_FSIZE, MAX_VERDICT + limits.fsize_mb * mb),
                                                     (resource.RLIMIT_CORE, 0)))]

    stdout, stderr, harness_err = tempfile.TemporaryFile(), tempfile.TemporaryFile(), tempfile.TemporaryFile()
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    source = _child_source()
    secret = os.urandom(32)
    start = time.monotonic()
    deadline = start + limits.wall_s + GRACE_S
    worker = harness = None
    verdict_bytes, harness_timed_out, worker_done = b"", False, False
    try:
        spec = {"root": WORKDIR, "requests_fd": requests_r, "answers_fd": answers_w, "fence": python_fence,
                "no_fork": block_fork}
        argv = _sandbox_argv(boundary["bwrap"], boundary["mounts"], limits) + [
            boundary["python"], "-I", "-S", "-c", source, "worker", json.dumps(spec)]
        try:
            worker = subprocess.Popen(_launched(argv, worker_limits, "self" if uid is None else str(uid)),
                                      stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd="/",
                                      env={"PATH": "/usr/bin:/bin"}, pass_fds=(requests_r, answers_w),
                                      close_fds=True)
        except (OSError, subprocess.SubprocessError) as exc:  # never run it any other way
            raise SandboxUnavailable(f"the code sandbox could not start: {exc}") from None
        harness = subprocess.Popen(_launched([sys.executable, "-I", "-S", "-c", source, "harness"], harness_limits,
                                             "keep"),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=harness_err,
                                   pass_fds=(requests_w, answers_r), close_fds=True,
                                   env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=tempfile.gettempdir())
        # pass_fds keeps the numbers: the harness holds the pipes' other ends under the same descriptors
        job = {"requests_fd": requests_w, "answers_fd": answers_r, "wall_s": limits.wall_s, "n_tests": n_tests,
               "tests": list(tests), "check": check, "entry_point": entry_point, "setup": setup, "code": code,
               "answer_bytes": limits.answer_kb * 1024, "secret": secret.hex()}
        for fd in (requests_r, requests_w, answers_r, answers_w):
            os.close(fd)
        requests_r = requests_w = answers_r = answers_w = -1
        try:
            verdict_bytes = harness.communicate(json.dumps(job).encode(),
                                                timeout=max(deadline - time.monotonic(), 0.1))[0]
        except subprocess.TimeoutExpired:  # the tests themselves hung: nothing passed
            harness_timed_out = True
        if not harness_timed_out and not _clean_finish(verdict_bytes):
            try:  # the worker died early or misbehaved: its exit status says how, once bwrap reports it
                worker.wait(timeout=min(0.5, max(deadline - time.monotonic(), 0)))
            except subprocess.TimeoutExpired:
                pass
        worker_done = worker.poll() is not None
    finally:
        for fd in (requests_r, requests_w, answers_r, answers_w):
            if fd >= 0:
                os.close(fd)
        if harness is not None:
            _kill_group(harness.pid)
            harness.wait()
        if worker is not None:
            _end_sandbox(worker, uid)
        elif uid is not None:
            _kill_uid(uid)
    duration = time.monotonic() - start
    try:
        verdict, channel_error = _read_verdict(verdict_bytes, secret), None
    except ValueError as exc:
        verdict, channel_error = {"load": None, "tests": [], "done": False}, str(exc)
    if harness_timed_out:
        verdict, channel_error = {"load": {"ok": False, "kind": "timeout"}, "tests": [], "done": False}, None
    returncode = worker.returncode if worker_done else None
    result = _summarise(verdict, n_tests, returncode, duration, _read(stdout), _read(stderr), isolation, limits)
    if channel_error and not harness_timed_out:
        result.passed, result.failed = False, list(range(result.n_tests))
        result.error, result.message = "verdict", channel_error
        result.tests = [dict(t, ok=False) for t in result.tests]
    result.harness_stderr = _read(harness_err)
    return result


def _clean_finish(data: bytes) -> bool:
    """Whether the harness's record (unchecked: only to decide whether the worker's exit status matters)
    says the solution loaded and every test ran; then there is no need to wait for the worker to exit."""
    return b'"done":true' in data and b'"load":{"ok":true}' in data


def _read(f, limit: int = 4000) -> str:
    f.seek(0)
    return clean_text(f.read(limit).decode("utf-8", "replace"))


def verdict_line(verdict: dict, secret: bytes) -> bytes:
    """The harness's record: its MAC (HMAC-SHA256 under the run's secret), a space, the verdict's JSON."""
    body = json.dumps(verdict, separators=(",", ":")).encode()
    return hmac.new(secret, body, "sha256").hexdigest().encode() + b" " + body + b"\n"


def _read_verdict(data: bytes, secret: bytes) -> dict:
    """The one verdict record the harness wrote, or ``ValueError`` saying what is wrong with the channel:
    anything but exactly one well-formed, authenticated line is not a verdict."""
    if not data:
        raise ValueError("no verdict: the harness wrote nothing")
    if len(data) > MAX_VERDICT:
        raise ValueError(f"verdict channel over {MAX_VERDICT} bytes")
    if not data.endswith(b"\n"):
        raise ValueError("verdict channel: trailing bytes after the record (or no line end)")
    if data.count(b"\n") != 1:
        raise ValueError(f"verdict channel: {data.count(10)} lines where exactly one record is accepted")
    mac, _, body = data[:-1].partition(b" ")
    if not hmac.compare_digest(mac, hmac.new(secret, body, "sha256").hexdigest().encode()):
        raise ValueError("verdict channel: the record's MAC does not match this run's secret")
    try:
        verdict = json.loads(body)
    except ValueError:
        raise ValueError("verdict channel: the record is not JSON") from None
    _check_verdict(verdict)
    return verdict


def _check_verdict(v) -> None:
    bad = ValueError("verdict channel: a malformed record")
    if type(v) is not dict or type(v.get("done")) is not bool or type(v.get("tests")) is not list:
        raise bad
    if v.get("load") is not None and (type(v["load"]) is not dict or type(v["load"].get("ok")) is not bool):
        raise bad
    if "n_tests" in v and type(v["n_tests"]) is not int:
        raise bad
    seen = set()
    for r in v["tests"]:
        if type(r) is not dict or type(r.get("index")) is not int or type(r.get("ok")) is not bool \
                or r["index"] in seen:
            raise bad
        seen.add(r["index"])


def _summarise(verdict: dict, n_tests: int, returncode: int | None, duration: float, stdout: str, stderr: str,
               isolation: dict, limits: Limits) -> SandboxResult:
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
    if "timeout" in kinds or load.get("kind") == "timeout":
        error, message = "timeout", f"wall-clock limit of {limits.wall_s}s"
    elif load.get("ok") is False and load.get("kind") != "killed":
        error, message = str(load.get("kind", "runtime")), str(load.get("message", ""))
    elif verdict.get("setup_error"):  # the tests' own setup failed (a bad check module): nothing was tested
        error, message = "setup", str(verdict["setup_error"])
    elif load.get("kind") == "killed" or "killed" in kinds or not verdict.get("done"):
        error, message = _death(returncode, duration, limits)
    else:
        error = next((k for k in kinds if k in ("memory", "forbidden", "process_limit", "answer_size")), None)
    passed = bool(verdict.get("done")) and error is None and not failed
    tests = [{"index": r.get("index"), "ok": bool(r.get("ok")), "message": clean_text(str(r.get("message", "")))}
             for r in records]
    return SandboxResult(passed, n_tests, failed, error, clean_text(message), returncode, duration, stdout,
                         stderr, isolation, tests)


def _death(returncode: int | None, duration: float, limits: Limits) -> tuple[str, str]:
    """Why the solution's process ended early, from how it ended (bwrap reports a signal as 128 + its
    number; the solution can fake that, which only changes this wording, never the verdict)."""
    if returncode is not None and returncode > 128 and returncode - 128 in signal.Signals._value2member_map_:
        sig = signal.Signals(returncode - 128)
        if sig in (signal.SIGXCPU, signal.SIGKILL) and duration >= limits.cpu_s * 0.9:
            return "timeout", f"CPU limit of {limits.cpu_s}s ({sig.name})"
        if sig == signal.SIGXFSZ:
            return "file_size", f"file size limit of {limits.fsize_mb} MB"
        return "killed", f"killed by {sig.name}"
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
    the problem has no tests. Raises ``SandboxUnavailable`` (never scores) when the boundary cannot be set
    up; ``require_boundary()`` checks that up front. Runs go to a pool of ``workers`` threads (default: one
    per CPU), each waiting on its own sandboxed processes, so the event loop never blocks and generation goes
    on meanwhile.
    """

    limits: Limits = field(default_factory=Limits)
    tests_key: str = "tests"
    partial: bool = False
    python: str | None = None
    workers: int | None = None
    bwrap: str | None = None

    def __post_init__(self) -> None:
        self._pool = None

    def require_boundary(self) -> dict:
        """Fail now, with ``SandboxUnavailable``, if the boundary cannot be set up (the first run would)."""
        return require_boundary(self.python, self.bwrap)

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
        call = functools.partial(run_code, code, limits=self.limits, python=self.python, bwrap=self.bwrap,
                                 **layout)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def __call__(self, problem: Problem, response: str) -> float | None:
        result = await self.run(problem, extract_code(response))
        if result is None:
            return None
        # Tests never reached (after a crash or a timeout) count as failed, so pass_rate is already 0 there.
        return result.pass_rate if self.partial else float(result.passed)
