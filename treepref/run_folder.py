"""A run folder holds the trees of one recipe, and the record of its latest attempt with the older ones kept.

Resuming skips problems whose tree exists, so trees of another recipe (another search, sampling, model,
environment or problem set) would silently join the run. ``recipe.json`` keeps a fingerprint of the parts of
the recipe that shape trees; a rerun with a different one is refused unless forced. Each attempt starts by
moving the previous attempt's ``summary.json``, ``errors.jsonl`` and ``problem_errors.jsonl`` (with a copy
of its ``config.yaml`` and ``recipe.json``) into ``attempts/<n>/``, so the files at the top describe the
latest attempt and none survives from an older one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from treepref.config import Config
from treepref.errors import UserInputError
from treepref.problems import Problem
from treepref.tree import atomic_write_text

RECIPE = "recipe.json"
MOVED = ("summary.json", "errors.jsonl", "problem_errors.jsonl")  # describe one attempt: moved away
COPIED = ("config.yaml", RECIPE)  # describe the run: copied, then rewritten atomically


class RecipeMismatch(UserInputError):
    """The run folder was written by another recipe."""


def _digest(data) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(cfg: Config, problems: Sequence[Problem]) -> dict[str, str]:
    """A digest per part of the recipe that shapes trees. Backend options (threads, cache and batch sizes),
    extraction and the ``run`` section do not; the problems count by content (ids, prompts, answers, meta),
    so the same problems from a moved file match and an edited file does not."""
    return {
        "model": _digest({"name": cfg.model.name, "backend": cfg.model.backend}),
        "problems": _digest([dataclasses.asdict(p) for p in problems]),
        "env": _digest(dataclasses.asdict(cfg.env)),
        "sampling": _digest(dataclasses.asdict(cfg.sampling)),
        "search": _digest(dataclasses.asdict(cfg.search)),
    }


def check_recipe(out: Path, parts: dict[str, str], *, force: bool = False) -> list[str]:
    """The parts in which ``out``'s recipe differs from ``parts`` ([] for a new folder, or one written before
    recipes were recorded). Raises ``RecipeMismatch`` (one line) when they differ, unless ``force``."""
    path = Path(out) / RECIPE
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["parts"]
    except (ValueError, KeyError, TypeError):
        raise RecipeMismatch(f"{path}: unreadable recipe record; pass --force to replace it") from None
    differ = sorted(k for k in set(old) | set(parts) if old.get(k) != parts.get(k))
    if differ and not force:
        raise RecipeMismatch(f"{out} holds the trees of another recipe ({', '.join(differ)} differ from "
                             f"{Path(out) / 'config.yaml'}); write to another --output, or pass --force to "
                             "continue this run with the new recipe")
    return differ


def start_attempt(out: Path) -> Path | None:
    """Move the previous attempt's records into ``attempts/<n>/`` (n counts attempts from 1); returns that
    folder, or None when there was no previous attempt."""
    out = Path(out)
    present = [name for name in MOVED + COPIED if (out / name).exists()]
    if not present:
        return None
    root = out / "attempts"
    done = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    folder = root / str(max(done, default=0) + 1)
    folder.mkdir(parents=True)
    for name in present:
        if name in MOVED:
            os.replace(out / name, folder / name)
        else:
            shutil.copy2(out / name, folder / name)
    return folder


def write_recipe(out: Path, parts: dict[str, str], forced: list[str]) -> None:
    """Record the recipe of the trees written from now on (``forced``: the parts that changed by --force)."""
    record = {"fingerprint": _digest(parts), "parts": parts}
    if forced:
        record["forced"] = forced
    atomic_write_text(Path(out) / RECIPE, json.dumps(record, indent=2) + "\n")
