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


PREFIXES = (None, "any", "success", "value")

# Every filter and its default (None: off; pass None or prefix="any" to turn a default off). The sibling-pair
# defaults come from bench/yield.py: with max_min pairs at two operations (64 problems, 600 tokens each,
# bench/results/yield-d2-budget600-seed0.md) a successful prefix and two visits per non-final side cost MCTS
# one good pair of 44 (good share 62% -> 62%) and raised flat sampling's good share from 63% to 77% by
# dropping its single-sample sides (48 -> 20 good pairs): a side valued by one completion is a coin flip.
# ``prefix_value`` is the threshold of ``prefix="value"`` and nothing else.
EXACT_REJECTED = (None, False, True, "judged")
FILTER_DEFAULTS = {"prefix": "success", "prefix_value": 0.5, "min_visits": 2, "exact_rejected": None,
                   "checked_steps": None, "min_margin": None, "min_edit": None, "max_per_node": None,
                   "max_per_problem": None}


def filter_settings(names, given: dict) -> dict:
    """The settings of the filters ``names`` (a format's): ``given`` over ``FILTER_DEFAULTS``, checked.
    This is what ``stats["filters"]`` records and what ``apply_filters`` is called with."""
    out = {name: given.get(name, FILTER_DEFAULTS[name]) for name in names}
    if out.get("prefix") not in PREFIXES:
        raise ValueError(f"unknown prefix {out['prefix']!r}; choose one of {list(PREFIXES)}")
    if out.get("exact_rejected") not in EXACT_REJECTED:
        raise ValueError(f"exact_rejected must be true, false or 'judged', got {out['exact_rejected']!r}")
    if out.get("checked_steps") not in (None, False, True):
        raise ValueError(f"checked_steps must be true or false, got {out['checked_steps']!r}")
    if "prefix_value" in given and out.get("prefix") != "value":
        raise ValueError(f"prefix_value={given['prefix_value']!r} is read only with prefix='value' "
                         f"(got prefix={out.get('prefix')!r})")
    return out


def _prefix_ok(it: Item, prefix: str, threshold: float) -> bool:
    if prefix == "success":
        return it.checks["on_success_path"]
    return all(v is not None and v >= threshold for v in it.checks["prefix_values"])


def apply_filters(items: list[Item], *, prefix: str | None = None, prefix_value: float = 0.5,
                  min_visits: int | None = None, exact_rejected: bool | str | None = None,
                  checked_steps: bool | None = None, min_margin: float | None = None,
                  min_edit: int | None = None, max_per_node: int | None = None, max_per_problem: int | None = None
                  ) -> tuple[list[Item], dict[str, int]]:
    """Filter items in this order, each one counting in ``dropped`` what it removed from what the earlier
    ones left (a filter that is off, None, is not counted):

    * ``prefix`` (sibling pairs): ``"success"`` keeps pairs whose parent lies on a successful path
      (``common.success_nodes``); ``"value"`` keeps pairs where every node on the parent's path (root
      excluded) has the export's value ≥ ``prefix_value`` (an unvalued node fails; depth-1 pairs pass);
      None or ``"any"``: no condition (``"any"`` is counted, as 0).
    * ``min_visits`` (sibling pairs): each side that is not final needs at least this many visits (a final
      side's value is its reward, exact whatever its visits).
    * ``exact_rejected`` (sibling pairs): True keeps pairs whose rejected step is final, so its value is its
      own reward (a wrong answer, a step the environment's step check ended, a stop without an answer)
      rather than an estimate from completions below it; a right step whose completions happened to fail
      then never stands as rejected. ``"judged"`` also asks that the environment judged what the step
      states (a wrong answer, a false step), so no stop without an answer and no cut step is rejected.
    * ``checked_steps`` (sibling pairs): True keeps pairs whose prefix steps and chosen step the
      environment's step check judged (``Tree.checked``): a step of prose that happened to lie on a path to
      the answer is neither chosen nor part of a prefix, since nobody knows whether it is right. A chosen
      final answer needs the check's verdict too, not only the environment's reading of an answer in it
      ("..., which is 56." after prose arithmetic), so it wants a check that judges answers
      (``arithmetic_derived``, ``arithmetic_counted``). Without a step check every pair passes.
    * ``min_margin`` (unknown margins are dropped too), ``min_edit`` (characters between the two texts).
    * ``max_per_node``, ``max_per_problem``: caps, keeping the largest margins.

    Returns the kept items and the drop counts."""
    dropped = {}
    if prefix is not None:
        if prefix not in PREFIXES:
            raise ValueError(f"unknown prefix {prefix!r}; choose one of {list(PREFIXES)}")
        kept = items if prefix == "any" else [it for it in items if _prefix_ok(it, prefix, prefix_value)]
        dropped["prefix"], items = len(items) - len(kept), kept
    if min_visits is not None:
        kept = [it for it in items if all(v >= min_visits for v in it.checks["side_visits"])]
        dropped["min_visits"], items = len(items) - len(kept), kept
    if exact_rejected:
        key = "rejected_judged" if exact_rejected == "judged" else "rejected_final"
        kept = [it for it in items if it.checks[key]]
        dropped["exact_rejected"], items = len(items) - len(kept), kept
    if checked_steps:
        kept = [it for it in items if it.checks["steps_checked"]]
        dropped["checked_steps"], items = len(items) - len(kept), kept
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
        # rows by the depth of the steps they compare (1: the first step, under an empty prefix)
        "depth_histogram": {str(d): c for d, c in sorted(Counter(it.row["depth"] for it in items
                                                                   if "depth" in it.row).items())},
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "generated_tokens": tokens,
        "generated_tokens_per_row": tokens / n if n else None,
    }
