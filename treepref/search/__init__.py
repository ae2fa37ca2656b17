"""Search algorithms by name, for the CLI and YAML recipes; the modules load only when a name is asked for.

Each search is ``async search(problem, ctx, cfg) -> Tree`` with its own config dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

# name -> (module, search function, config class)
SEARCHES: dict[str, tuple[str, str, str]] = {
    "mcts": ("treepref.search.mcts", "mcts", "MCTSConfig"),
    "best_first": ("treepref.search.best_first", "best_first", "BestFirstConfig"),
    "beam": ("treepref.search.beam", "beam", "BeamConfig"),
    "sample": ("treepref.search.sample", "sample", "SampleConfig"),
    "refine": ("treepref.search.refine", "refine", "RefineConfig"),  # SPaR: judge, refine, judge again
    "dfs": ("treepref.search.dfs", "dfs", "DFSConfig"),  # DFSDT: depth first with backtracking (ToolLLM)
    # Labelling procedures that build trees the same way: sampled solutions with Monte Carlo step values.
    "math_shepherd": ("treepref.search.math_shepherd", "math_shepherd", "MathShepherdConfig"),
    "omegaprm": ("treepref.search.omegaprm", "omegaprm", "OmegaPRMConfig"),
}


def _load(name: str, which: int):
    if name not in SEARCHES:
        raise ValueError(f"unknown search {name!r}; choose one of {', '.join(sorted(SEARCHES))}")
    entry = SEARCHES[name]
    return getattr(importlib.import_module(entry[0]), entry[which])


def get_search(name: str) -> Callable:
    """The search function registered as ``name``: ``async (problem, ctx, cfg) -> Tree``."""
    return _load(name, 1)


def get_config_class(name: str) -> type:
    """The config dataclass of search ``name``."""
    return _load(name, 2)


def build_config(name: str, options: dict[str, Any] | None, source: str = "<options>"):
    """Build search ``name``'s config from ``options`` (a YAML mapping), naming ``source`` in every error.

    Unknown keys and values of the wrong type are rejected here, before ``__post_init__`` checks ranges.
    A callable option (a scorer) may be given as ``"module:function"``.
    """
    try:
        cls = get_config_class(name)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in options.items():
        if key not in fields:
            raise ValueError(f"{source}: unknown option {key!r} for search {name!r}; "
                             f"known options: {', '.join(fields)}")
        options[key] = _check(name, fields[key], value, source)
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: search {name!r}: {exc}") from None


def _check(search: str, f: dataclasses.Field, value: Any, source: str) -> Any:
    default = f.default
    where = f"{source}: search {search!r} option {f.name!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif default is None and isinstance(value, str) and ":" in value:  # a hook named as module:function
        module, _, attr = value.partition(":")
        try:
            value = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{where}: cannot import {value!r} ({exc})") from None
    return value
