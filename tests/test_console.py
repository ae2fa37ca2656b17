"""The quiet console: engine noise (ours, a child process's, raw descriptor writes) lands in the log file;
the terminal stream still reaches the user."""

from __future__ import annotations

import os
import subprocess
import sys

from treepref.console import engine_log


def test_engine_noise_goes_to_the_log_and_the_terminal_stream_to_the_user(tmp_path, capfd):
    log = tmp_path / "logs" / "engine.log"
    with engine_log(log) as terminal:
        # what a logging handler bound at import writes to: the process's real streams (pytest swaps sys.stdout)
        print("python noise", file=sys.__stdout__)
        print("warning noise", file=sys.__stderr__)
        os.write(2, b"descriptor noise\n")
        subprocess.run([sys.executable, "-c", "print('child noise')"], check=True)
        terminal.write("progress 1/1\n")
    print("after")
    out, err = capfd.readouterr()
    text = log.read_text()
    for noise in ("python noise", "warning noise", "descriptor noise", "child noise"):
        assert noise in text and noise not in out + err
    assert "progress 1/1" in err and "after" in out and "progress" not in text


def test_verbose_redirects_nothing(tmp_path, capfd):
    with engine_log(tmp_path / "engine.log", enabled=False) as terminal:
        print("shown")
        assert terminal is sys.stderr
    assert "shown" in capfd.readouterr().out and not (tmp_path / "engine.log").exists()
