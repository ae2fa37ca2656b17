"""Why an export came out empty, in one line for the run's summary (``summary.json`` and the console).

A pair needs two sibling steps whose values differ. With sparse rewards and a small policy no episode may
score, every value is the same, and the export is empty for a reason the rows cannot show; this module
reads the trees and says which of the usual reasons it is.
"""

from __future__ import annotations

from treepref.envs.base import is_success
from treepref.tree import Tree


def episodes_scored(trees: list[Tree], threshold: float = 1.0) -> tuple[int, int]:
    """(final nodes with a positive reward or a success, all final nodes) over ``trees``."""
    scored = total = 0
    for tree in trees:
        for node in tree.nodes():
            if node and tree.is_final(node):
                total += 1
                reward = tree.reward[node]
                scored += int((reward or 0) > 0 or (bool(tree.terminated[node])
                                               and is_success(reward, tree.info[node], threshold)))
    return scored, total


def zero_pairs_reason(trees: list[Tree], threshold: float = 1.0, options: dict | None = None) -> str:
    """The likeliest reason an export of sibling pairs from ``trees`` has no rows, as one line."""
    if not trees:
        return "0 pairs: no trees"
    scored, total = episodes_scored(trees, threshold)
    tally = f"({scored} of {total} episodes scored)"
    values: set[float] = set()
    differing = False
    for tree in trees:
        for node in tree.nodes(kind=None):
            kids = [tree.value(c) for c in tree.children(node)]
            kids = [round(v, 9) for v in kids if v is not None]
            values.update(kids)
            differing = differing or len(set(kids)) > 1
    if not values:
        return f"0 pairs: no step was valued (no visits) {tally}"
    if len(values) == 1:
        v = next(iter(values))
        return f"0 pairs: no node with a value above or below {v:g}: every valued step has it {tally}"
    if not differing:
        return f"0 pairs: no two sibling steps differ in value ({len(values)} values, never between siblings) {tally}"
    filters = ", ".join(f"{k}={v!r}" for k, v in (options or {}).items()) or "the defaults"
    return f"0 pairs: siblings differ in value, but the export's rule and filters ({filters}) kept none {tally}"
