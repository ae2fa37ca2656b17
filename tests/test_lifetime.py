"""A tethered process exits when its parent is killed with SIGKILL; an untethered one is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import multiprocessing, os, time
from treepref.backends.lifetime import Tethered

if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    tethered = spawn.Process(target=Tethered(time.sleep, os.getpid()), args=(600,))
    plain = spawn.Process(target=time.sleep, args=(600,))
    tethered.start()
    plain.start()
    print(tethered.pid, plain.pid, flush=True)
    time.sleep(600)
"""


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_tethered_child_dies_with_its_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parent.parent)
    tethered, plain = map(int, parent.stdout.readline().split())
    try:
        time.sleep(1)  # the children are up and watching
        assert running(tethered) and running(plain)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while running(tethered) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(tethered)
        assert running(plain)  # the control: without the tether a child outlives its parent
    finally:
        for pid in (tethered, plain):
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()
