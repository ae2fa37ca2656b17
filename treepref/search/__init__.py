"""Search algorithms by name, for the CLI and YAML recipes; the modules load only when a name is asked for.

Each search is ``async search(problem, ctx, cfg) -> Tree`` with its own config dataclass, registered as a
``Search`` record (``SEARCHES.register("greedy", Search(greedy, GreedyConfig))`` adds a user's; a
``"package.module:SEARCH"`` spec works too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from treepref.options import coerce, option_types
from treepref.registry import Registry, resolve, where


@dataclass(frozen=True)
class Search:
    """A search a recipe can name: the function that builds one tree and the config dataclass of its options."""

    run: Callable  # async (problem, ctx, cfg) -> Tree
    config: type


SEARCHES = Registry("search", {
    "mcts": "treepref.search.mcts:SEARCH",
    "best_first": "treepref.search.best_first:SEARCH",
    "beam": "treepref.search.beam:SEARCH",
    "sample": "treepref.search.sample:SEARCH",
    "refine": "treepref.search.refine:SEARCH",  # SPaR: judge, refine, judge again
    "dfs": "treepref.search.dfs:SEARCH",  # DFSDT: depth first with backtracking (ToolLLM)
    "q_guided": "treepref.search.q_guided:SEARCH",  # act by a step-level Q-value model: best of k actions a step
    # Labelling procedures that build trees the same way: sampled solutions with Monte Carlo step values.
    "math_shepherd": "treepref.search.math_shepherd:SEARCH",
    "omegaprm": "treepref.search.omegaprm:SEARCH",
})


def _load(name: str, source: str | None = None) -> Search:
    entry = SEARCHES.get(name, source=source)
    if not isinstance(entry, Search):
        raise ValueError(f"{where(source, None)}search {name!r} is registered as {entry!r}, "
                         "not a treepref.search.Search(run, config)")
    return entry


def get_search(name: str) -> Callable:
    """The search function registered as ``name``: ``async (problem, ctx, cfg) -> Tree``."""
    return _load(name).run


def get_config_class(name: str) -> type:
    """The config dataclass of search ``name``."""
    return _load(name).config


def build_config(name: str, options: dict[str, Any] | None, source: str = "<options>"):
    """Build search ``name``'s config from ``options`` (a YAML mapping), naming ``source`` in every error.

    Unknown keys and values of the wrong type (``options.coerce`` against the field's annotation) are
    rejected here, before ``__post_init__`` checks ranges. A callable option (a scorer) may be given as
    ``"module:function"``.
    """
    cls = _load(name, source).config
    options = dict(options or {})
    fields = [f.name for f in dataclasses.fields(cls)]
    kinds = option_types(cls)
    for key, value in options.items():
        if key not in fields:
            raise ValueError(f"{source}: unknown option {key!r} for search {name!r}; "
                             f"known options: {', '.join(fields)}")
        if isinstance(value, str) and ":" in value and _is_hook(kinds.get(key)):
            value = resolve(value, what="function", source=source, key=f"search.options.{key}")
        options[key] = coerce(value, kinds.get(key), source=source, key=f"search.options.{key}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: search {name!r}: {exc}") from None


def _is_hook(kind: Any) -> bool:
    """Whether an option's annotation admits a callable (a scorer named in YAML as ``module:function``)."""
    import collections.abc
    import typing

    return kind is not None and (typing.get_origin(kind) is collections.abc.Callable
                                 or any(_is_hook(a) for a in typing.get_args(kind)))
