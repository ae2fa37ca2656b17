"""Exports: search trees turned into preference, stepwise and tree datasets (see docs/formats.md).

``export(trees, fmt, ...)`` builds a ``datasets.Dataset`` and its statistics; ``write_export`` writes both.
``FORMATS`` and ``RULES`` map the names the CLI accepts to their builders and pair-selection rules.
"""

from treepref.extract.api import export, template_from_tokenizer, write_export
from treepref.extract.formats import FORMATS
from treepref.extract.rules import RULES

__all__ = ["export", "write_export", "template_from_tokenizer", "FORMATS", "RULES"]
