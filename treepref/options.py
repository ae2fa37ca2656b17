"""Typed options: the one check of an option's value, wherever a user writes one (a recipe section, a search's
config, an environment's options).

A YAML value is a bool, a number, a string, a list, a mapping or null; each option says which it takes by its
annotation (or, where annotations cannot be read, by its default). ``coerce`` checks a value against that and
fails in one line of one shape, ``<source>: <key>: expected <type>, got <value>``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

from treepref.registry import where


# The value types a YAML file can hold; an option typed otherwise (a class, a callable) is its receiver's to check.
PLAIN = (bool, int, float, str, list, tuple, dict, type(None))


def _allowed(kind: Any) -> tuple[type, ...] | None:
    """The plain types ``kind`` (a type or an annotation such as ``int | None``, ``tuple[str, ...]``)
    admits, or None when it admits something that is not plain, or is None (then nothing is checked)."""
    if kind is None:
        return None
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        parts = [_allowed(a) for a in typing.get_args(kind)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    kind = typing.get_origin(kind) or kind
    return (kind,) if kind in PLAIN else None


def _type_names(allowed: tuple[type, ...]) -> str:
    return " or ".join("null" if a is type(None) else a.__name__ for a in allowed)


def coerce(value: Any, kind: Any, *, source: str | None, key: str, error: type[Exception] = ValueError) -> Any:
    """``value`` checked against ``kind``: the one rule for a typed option, in a recipe section, a search's
    config or an environment's options. An int is taken (as a float) where a float is expected and a list
    where a tuple is; a bool is never a number. Anything else of the wrong type raises ``error``:
    ``<source>: <key>: expected <type>, got <value>``."""
    allowed = _allowed(kind)
    if allowed is None:
        return value
    if isinstance(value, bool):
        ok = bool in allowed
    elif float in allowed and int not in allowed and isinstance(value, int):
        return float(value)
    elif tuple in allowed and isinstance(value, list):
        return tuple(value)
    else:
        ok = isinstance(value, tuple(a for a in allowed if a is not bool))
    if not ok:
        raise error(f"{where(source, key)}expected {_type_names(allowed)}, got {value!r}")
    return value


def option_types(cls: type) -> dict[str, Any]:
    """Option name -> the type ``coerce`` checks it against: the annotation (a dataclass field, else a
    constructor parameter), or, where annotations cannot be read, the type of its default (None: unchecked)."""
    target = cls if dataclasses.is_dataclass(cls) else cls.__init__
    try:
        return dict(typing.get_type_hints(target))
    except Exception:  # an annotation naming what is imported only for type checkers: fall back to defaults
        pass
    if dataclasses.is_dataclass(cls):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    else:
        defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()}
    return {name: type(d) for name, d in defaults.items() if type(d) in PLAIN and d is not None}
