"""Names a recipe may use, and the one way each is looked up: ``resolve`` for a ``module:attr`` spec, and
``Registry`` for a kind of thing (searches, environments, backends, problem sources, export formats, pair
rules, evaluators, step checks, aggregators).

A user's plug-in registers the way a built-in does (``SEARCHES.register("greedy", Search(greedy,
GreedyConfig))``, or a ``"package.module:attr"`` spec), and from then on its name works everywhere a built-in
name does. Built-ins are registered as specs, so listing names (``--help``, an error) imports nothing: vLLM,
torch and transformers load only when a name that needs them is asked for. Every failure is one line that
says what was asked, what failed and which names are known.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


def where(source: str | None, key: str | None) -> str:
    """The ``"<source>: <key>: "`` prefix of a message (either part may be absent)."""
    return "".join(f"{part}: " for part in (source, key) if part)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _known(names: Iterable[str], more: str = "") -> str:
    listed = ", ".join(sorted(names))
    parts = [p for p in (listed, more) if p]
    return f" (known: {'; or '.join(parts)})" if parts else ""


def resolve(spec: str, *, what: str = "object", source: str | None = None, key: str | None = None,
            known: Iterable[str] = (), error: type[Exception] = ValueError) -> Any:
    """The object ``spec`` (``"package.module:attr"``, ``attr`` may be dotted) names, imported now.

    Raises ``error`` with one line: ``<source>: <key>: <what> '<spec>': <what failed> (known: <names>)``,
    where what failed is a module that does not exist, a module whose import raised (its first line), or
    a missing attribute.
    """
    def fail(why: str):
        return error(f"{where(source, key)}{what} {spec!r}: {why}{_known(known)}")

    module, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not (module and sep and attr):
        raise fail("not a known name nor 'package.module:attr'")
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise fail(f"no module named {exc.name!r}") from None
        raise fail(f"importing {module!r} failed: {_first_line(exc)}") from None  # a module it imports is missing
    except Exception as exc:  # a user's module that raises on import: its first line, not a traceback
        raise fail(f"importing {module!r} failed: {_first_line(exc)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise fail(f"module {module!r} has no attribute {attr!r}") from None
    return obj


@dataclass
class Registry:
    """One kind of named thing: name -> the object, or a ``"module:attr"`` spec imported when the name is
    first asked for. A string entry is always a spec.

    ``what`` is the word in messages ("search", "environment"); ``inline``: a name that is not registered may
    be given in place as ``module:attr`` (a user's environment class, a step check); ``error``: the exception
    class raised for a bad name (a ``ValueError``).
    """

    what: str
    entries: dict[str, Any] = field(default_factory=dict)
    inline: bool = False
    error: type[Exception] = ValueError

    def register(self, name: str, obj: Any) -> Any:
        """Add (or replace) ``name``; ``obj`` is the object or a ``"module:attr"`` spec. Returns ``obj``."""
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"a {self.what} name must be a non-empty string without ':', got {name!r}")
        self.entries[name] = obj
        return obj

    def names(self) -> list[str]:
        """The registered names, in registration order (built-ins first)."""
        return list(self.entries)

    def check(self, name: str, *, source: str | None = None, key: str | None = None) -> str:
        """``name`` if it is registered, without importing its entry (a recipe is checked before anything heavy
        loads); an inline ``module:attr`` is imported. Otherwise ``get``'s error."""
        if name not in self:
            self.get(name, source=source, key=key)
        return name

    def get(self, name: str, *, source: str | None = None, key: str | None = None) -> Any:
        """The object registered as ``name`` (or, where ``inline``, the ``module:attr`` it spells); a name
        that is neither raises ``error`` naming it and the known names."""
        at = where(source, key)
        if not isinstance(name, str):
            raise self.error(f"{at}expected a {self.what} name, got {name!r}")
        if name in self.entries:
            entry = self.entries[name]
            if not isinstance(entry, str):
                return entry
            return resolve(entry, what=f"{self.what} {name!r} registered as", source=source, key=key,
                           error=self.error)
        if self.inline and ":" in name:
            return resolve(name, what=self.what, source=source, key=key, known=self.entries, error=self.error)
        more = "package.module:attr" if self.inline else ""
        raise self.error(f"{at}unknown {self.what} {name!r}{_known(self.entries, more)}")

    # Read like the dicts these used to be: ``name in REG``, ``sorted(REG)``, ``REG[name]``.
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def items(self) -> list[tuple[str, Any]]:
        """``(name, object)`` for every registered name, each imported now."""
        return [(name, self.get(name)) for name in self.entries]
