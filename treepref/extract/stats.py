"""Deduplication, filters and the statistics written next to every export."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from treepref.extract.common import edit_distance
from treepref.extract.formats import Item
from treepref.tree import Tree


def dedup(items: list[Item]) -> tuple[list[Item], int]:
    """Keep the first item of each key (pairs: same problem, same prefix, same two step texts)."""
    seen, out = set(), []
    for it in items:
        if it.key not in seen:
            seen.add(it.key)
            out.append(it)
    return out, len(items) - len(out)


def _top(items: list[Item], group, limit: int) -> list[Item]:
    """At most ``limit`` items per group, largest margin first (None last), original order kept."""
    by_group: dict = defaultdict(list)
    for i, it in enumerate(items):
        by_group[group(it)].append(i)
    keep = set()
    for idx in by_group.values():
        ranked = sorted(idx, key=lambda i: -items[i].margin if items[i].margin is not None else math.inf)
        keep.update(ranked[:limit])
    return [it for i, it in enumerate(items) if i in keep]


def apply_filters(items: list[Item], *, min_margin: float | None = None, min_edit: int | None = None,
                  max_per_node: int | None = None, max_per_problem: int | None = None
                  ) -> tuple[list[Item], dict[str, int]]:
    """Drop items below ``min_margin`` (unknown margins too) or ``min_edit`` characters apart, then cap
    items per node and per problem keeping the largest margins. Returns the kept items and drop counts."""
    dropped = {}
    if min_margin is not None:
        kept = [it for it in items if it.margin is not None and it.margin >= min_margin]
        dropped["min_margin"], items = len(items) - len(kept), kept
    if min_edit is not None:
        kept = [it for it in items if it.texts is not None and edit_distance(*it.texts) >= min_edit]
        dropped["min_edit"], items = len(items) - len(kept), kept
    if max_per_node is not None:
        kept = _top(items, lambda it: it.group, max_per_node)
        dropped["max_per_node"], items = len(items) - len(kept), kept
    if max_per_problem is not None:
        kept = _top(items, lambda it: it.row["problem_id"], max_per_problem)
        dropped["max_per_problem"], items = len(items) - len(kept), kept
    return items, dropped


def margin_histogram(margins: list[float], width: float = 0.1) -> dict[str, int]:
    """Counts of margins in bins ``[k·width, (k+1)·width)``, keyed by the bin's lower edge."""
    counts = Counter(math.floor(round(m / width, 9)) for m in margins)
    return {f"{k * width:.2f}": counts[k] for k in sorted(counts)}


def export_stats(trees: list[Tree], items: list[Item]) -> dict:
    """Rows per problem, share of problems with a row, margin histogram and generated tokens per row.

    Generated tokens are the ``n_tokens`` of every node of every tree, Monte Carlo rollouts included:
    the whole cost of the search, charged to the rows it yielded.
    """
    per_problem = Counter(it.row["problem_id"] for it in items)
    counts = {t.problem_id: per_problem.get(t.problem_id, 0) for t in trees}
    # The search's own count includes merged duplicate siblings, which the node columns do not.
    tokens = sum(t.meta.get("generated_tokens", sum(t.n_tokens)) for t in trees)
    margins = [it.margin for it in items if it.margin is not None]
    n = len(items)
    return {
        "problems": len(trees),
        "rows": n,
        "rows_per_problem": counts,
        "mean_rows_per_problem": n / len(trees) if trees else 0.0,
        "share_with_rows": sum(c > 0 for c in counts.values()) / len(trees) if trees else 0.0,
        "margin_histogram": margin_histogram(margins),
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "generated_tokens": tokens,
        "generated_tokens_per_row": tokens / n if n else None,
    }
