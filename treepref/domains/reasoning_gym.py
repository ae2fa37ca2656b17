"""Procedural tasks from the ``reasoning-gym`` package (installed with ``pip install treepref[tasks]``).

reasoning-gym generates problems with answers offline from a task name and a seed, which makes it a
no-download source of many domains (``gsm_symbolic``, ``basic_arithmetic``, ...).
"""

from __future__ import annotations

import json
from typing import Any

from treepref.problems import Problem


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def load_reasoning_gym(task: str, *, count: int = 100, seed: int = 0, **config: Any) -> list[Problem]:
    """``count`` problems of reasoning-gym task ``task``; ``config`` goes to the task's config class.

    Meta keeps the task name and the entry's JSON-serialisable metadata (so trees can be saved as JSON).
    """
    try:
        import reasoning_gym
    except ImportError as e:  # optional dependency
        raise ImportError("the reasoning_gym source needs `pip install reasoning-gym` "
                          "(or `pip install treepref[tasks]`)") from e
    if count <= 0:
        return []
    dataset = reasoning_gym.create_dataset(task, size=count, seed=seed, **config)
    problems = []
    for i, entry in enumerate(dataset):
        meta = {k: v for k, v in (entry.get("metadata") or {}).items() if _jsonable(v)}
        answer = entry.get("answer")
        problems.append(Problem(id=f"{task}-{seed}-{i}", prompt=entry["question"],
                                answer=None if answer is None else str(answer),
                                meta={"task": task, **meta}))
    return problems
