"""Value backup and score aggregation as small pure functions, chosen by name from a config.

Searches back values up a path (mean for MCTS, max for best-first / optimistic searches, a discounted
return for agent environments); PRM exports squash per-step scores into one solution score (min, last,
product, mean). Both are ``Sequence[float] -> float`` and live in one name -> function map so a recipe can
say ``aggregate: min`` without importing anything.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from treepref.registry import Registry

Aggregator = Callable[[Sequence[float]], float]


def _require(values: Sequence[float], name: str) -> None:
    if len(values) == 0:
        raise ValueError(f"{name} of an empty sequence is undefined")


def mean(values: Sequence[float]) -> float:
    """The MCTS backup: the node's value is the average of what its simulations returned."""
    _require(values, "mean")
    return sum(values) / len(values)


def maximum(values: Sequence[float]) -> float:
    """The optimistic backup: a node is worth its best continuation."""
    _require(values, "max")
    return max(values)


def minimum(values: Sequence[float]) -> float:
    """PRM 'min': a solution is only as good as its weakest step (one wrong step spoils it)."""
    _require(values, "min")
    return min(values)


def last(values: Sequence[float]) -> float:
    """PRM 'last': the score of the final step, which a PRM trained on prefixes reads as P(whole path ok)."""
    _require(values, "last")
    return values[-1]


def product(values: Sequence[float]) -> float:
    """PRM 'product': if step scores are P(step ok | prefix ok), the chain rule gives
    P(all steps ok) = prod_t P(step_t ok | steps_<t ok)."""
    _require(values, "product")
    return math.prod(values)


def total(values: Sequence[float]) -> float:
    """Undiscounted return (gamma = 1)."""
    return float(sum(values))


def discounted_return(rewards: Sequence[float], gamma: float = 1.0) -> float:
    """G_0 = sum_t gamma^t r_t, computed backwards as G_t = r_t + gamma * G_{t+1} (G_T = 0)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    g = 0.0
    for r in reversed(rewards):
        g = r + gamma * g
    return g


def discounted(gamma: float) -> Aggregator:
    """A discounted-return aggregator with ``gamma`` fixed (for ``get_aggregator('discounted:0.9')``)."""
    return lambda rewards: discounted_return(rewards, gamma)


AGGREGATORS = Registry("aggregator", {
    "mean": mean, "max": maximum, "min": minimum, "last": last, "product": product, "prod": product,
    "sum": total,
})


def get_aggregator(name: str) -> Aggregator:
    """The aggregator called ``name``: one of ``AGGREGATORS`` or ``discounted:<gamma>``."""
    key = name.strip().lower()
    if key.startswith("discounted"):
        _, _, g = key.partition(":")
        return discounted(float(g) if g else 1.0)
    if key not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r} (known: {', '.join(sorted(AGGREGATORS))}; "
                         "or discounted:<gamma>)")
    return AGGREGATORS.get(key)
