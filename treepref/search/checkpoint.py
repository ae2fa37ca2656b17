"""Mid-search checkpoints: a long search saves itself between simulations, and a resumed run continues it.

A checkpoint is the search's whole state at a quiet moment (no simulation in flight): the tree, the
environment state of every node and the search's own counters, pickled (the states hold environment data
of any kind) and written atomically to ``RUN/checkpoints/<problem>.pkl``. The runner hands each search a
``Checkpoint`` in ``SearchContext.checkpoint`` and deletes it once the finished tree is written. With a
deterministic backend the resumed tree is the tree an uninterrupted run would have written.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

from treepref.tree import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Where one problem's search saves itself. ``resume``: whether an existing checkpoint is used."""

    path: Path
    resume: bool = True
    tokens_before: int = 0  # what the tree had generated when it was saved (the runner adds it to its count)
    requests_before: int = 0
    broken: bool = False  # a state could not be saved (an environment's data that does not pickle)

    def load(self) -> dict | None:
        """The saved state, or None (none saved, resuming off, or unreadable: then the search starts over)."""
        if not self.resume or not self.path.exists():
            return None
        try:
            with open(self.path, "rb") as f:
                saved = pickle.load(f)
        except Exception as exc:  # a file from another version, or cut short by a crash before the rename
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None
        meta = saved["tree"].meta
        self.tokens_before = meta.get("generated_tokens", 0)
        self.requests_before = meta.get("policy_requests", 0)
        return saved

    def save(self, state: dict) -> None:
        if self.broken:
            return
        try:
            data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            self.broken = True  # keep searching; this problem just cannot be resumed mid-way
            log.warning("cannot checkpoint %s: %s", self.path.name, exc)
            return
        atomic_write_bytes(self.path, data)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
