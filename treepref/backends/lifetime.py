"""Engine processes die with the process that started them.

vLLM runs its engine core, and the engine core its workers, in processes of their own (``multiprocessing``,
spawned). When ``treepref generate`` is killed with SIGKILL nothing shuts them down: they were left running,
reparented and idle, holding about 6 GB of memory each time. ``tether_engine_processes()`` makes every
process a vLLM engine starts from this process watch its parent: a daemon thread polls the parent's pid,
and when the parent is gone the process stops itself (SIGTERM, vLLM's own clean shutdown, which stops its
workers; SIGKILL if it is still alive ``GRACE_S`` later). The child tethers its own children the same way.

A thread, not ``prctl(PR_SET_PDEATHSIG)``: the kernel sends the death signal when the *thread* that started
the child exits, so an engine built in a worker thread would be killed when that thread ends.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import threading
import time

POLL_S = 0.5  # how often a tethered process looks at its parent
GRACE_S = 10.0  # time a clean shutdown gets before SIGKILL

_PREFIXES = ("vllm.",)  # only the engine's own processes are tethered
_installed = False
_lock = threading.Lock()


class Tethered:
    """A process target that first starts the parent watch, then runs ``target`` (picklable when it is, so
    spawned processes take it)."""

    def __init__(self, target, parent_pid: int) -> None:
        self.target = target
        self.parent_pid = parent_pid

    def __call__(self, *args, **kwargs):
        watch_parent(self.parent_pid)
        tether_engine_processes()  # this process's own engine children (vLLM's workers) watch it in turn
        return self.target(*args, **kwargs)


def watch_parent(parent_pid: int, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> threading.Thread:
    """Stop this process once ``parent_pid`` is no longer its parent (the parent died: we were reparented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="treepref-parent-watch", daemon=True)
    thread.start()
    return thread


def tether_engine_processes() -> None:
    """From now on, every vLLM process started from this process dies with it (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        start = multiprocessing.process.BaseProcess.start

        def tethered_start(self) -> None:
            target = getattr(self, "_target", None)
            if target is not None and _is_engine(target) and _parent_is_us(self):
                self._target = Tethered(target, os.getpid())
            start(self)

        multiprocessing.process.BaseProcess.start = tethered_start
        _installed = True


def _parent_is_us(process) -> bool:
    """A forkserver's children have the server as their parent: watching it would tell nothing."""
    method = getattr(process, "_start_method", None) or multiprocessing.get_start_method(allow_none=True)
    return method != "forkserver"


def _is_engine(target) -> bool:
    module = getattr(target, "__module__", None) or ""
    return module.startswith(_PREFIXES)
