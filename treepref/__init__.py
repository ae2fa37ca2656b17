"""treepref: LLM tree search turned into step-level preference data.

From Python (docs/api.md): ``generate`` runs a recipe into a run folder, ``load_run`` opens one, and the
``Run`` exports, views and reports it; ``search`` searches problems with a policy object you hold; ``train``
trains on the exports as ``treepref train`` does. Importing treepref loads none of that (no torch, no engine):
each name is imported when it is first used.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "generate": "treepref.api",
    "load_run": "treepref.api",
    "Run": "treepref.api",
    "ProblemsFailed": "treepref.api",
    "UserInputError": "treepref.errors",
    "ConfigError": "treepref.config",
    "RecipeMismatch": "treepref.run_folder",
    "NoProblems": "treepref.pipeline",
    "Problem": "treepref.problems",
    "Tree": "treepref.tree",
}


def __getattr__(name: str):
    if name in CALLABLE_PACKAGES:  # the subpackage, made callable as it is set here (``_Package``)
        return importlib.import_module(f"treepref.{name}")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'treepref' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | set(CALLABLE_PACKAGES))


# Subpackages whose name is also a function of the API: ``treepref.search`` (the algorithms; calling it searches
# with your own policy) and ``treepref.train`` (the trainers; calling it trains as ``treepref train`` does).
CALLABLE_PACKAGES = ("search", "train")


class _CallablePackage(types.ModuleType):
    """A subpackage that is also the API function of its name: ``treepref.search(...)`` is
    ``treepref.api.search(...)`` and ``treepref.train(...)`` is ``treepref.api.train(...)``, while
    ``treepref.search.mcts`` and ``treepref.train.trainer`` stay the modules they are (a package attribute
    cannot be both a module and a function, so the module is made callable)."""

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module("treepref.api"), self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    """treepref itself: whenever one of ``CALLABLE_PACKAGES`` is imported (the import system sets it as an
    attribute here), that module becomes callable; nothing is imported for it in advance."""

    def __setattr__(self, name: str, value) -> None:
        if name in CALLABLE_PACKAGES and isinstance(value, types.ModuleType):
            value.__class__ = _CallablePackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["ConfigError", "NoProblems", "Problem", "ProblemsFailed", "RecipeMismatch", "Run", "Tree",
           "UserInputError", "__version__", "generate", "load_run", "search", "train"]
