"""The one exception every user mistake outside a recipe file becomes (a recipe's own is ``config.ConfigError``).

It lives in a module of its own, below everything that raises it, so that the run folder, the pipeline and the
command line share one class without importing each other.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A user's data or option is wrong: the message is one line that says which and why (the command line
    prints it and exits 2; Python callers catch it, or ``ValueError``)."""


__all__ = ["UserInputError"]
