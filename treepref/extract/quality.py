"""Label quality of step pairs where every step can be checked exactly (the built-in arithmetic domain).

A pair is *right* when its chosen step's arithmetic holds and its rejected step's does not, *inverted* when
it is the other way round, and *uninformative* when both steps check the same. Pairs with a step that
states no equation are not counted. This turns "are the search's values any good?" into a number.
"""

from __future__ import annotations

from typing import Callable, Iterable

StepCheck = Callable[[str], "bool | None"]


def pair_label_quality(rows: Iterable[dict], check: StepCheck | None = None) -> dict:
    """Counts and shares of right / inverted / uninformative pairs among the checkable ones."""
    if check is None:
        from treepref.domains.arithmetic import check_step

        def check(text: str) -> bool | None:
            return check_step(None, text)

    counts = {"pairs": 0, "checkable": 0, "right": 0, "inverted": 0, "uninformative": 0}
    for row in rows:
        counts["pairs"] += 1
        chosen, rejected = check(_text(row["chosen"])), check(_text(row["rejected"]))
        if chosen is None or rejected is None:
            continue
        counts["checkable"] += 1
        if chosen and not rejected:
            counts["right"] += 1
        elif rejected and not chosen:
            counts["inverted"] += 1
        else:
            counts["uninformative"] += 1
    n = counts["checkable"]
    counts["right_share"] = counts["right"] / n if n else None
    counts["inverted_share"] = counts["inverted"] / n if n else None
    return counts


def _text(value) -> str:
    """A completion in either TRL layout: a string, or a list of messages."""
    if isinstance(value, str):
        return value
    return "".join(m.get("content", "") for m in value)
