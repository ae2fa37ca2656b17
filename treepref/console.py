"""A quiet console: the engines' logs go to a file, the terminal gets what the user asked for.

vLLM logs from its own processes (the engine core and its workers inherit our file descriptors), and
transformers, torch and Triton print warnings straight to the descriptors, so redirecting Python's
``sys.stdout`` is not enough. ``engine_log`` points descriptors 1 and 2 at ``RUN/logs/engine.log`` for the
length of a run and hands back a stream on the real terminal for the progress bar and our own lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO


@contextlib.contextmanager
def engine_log(path: str | Path, *, enabled: bool = True) -> Iterator[TextIO]:
    """Send everything written to stdout/stderr (this process and its children) to ``path``; yield a
    stream on the original stderr. Disabled (``-v``), it yields ``sys.stderr`` and redirects nothing."""
    if not enabled:
        yield sys.stderr
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            _flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
