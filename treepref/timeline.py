"""When the policy generated and when evaluators ran, to say how much evaluation hid behind generation.

An evaluator (a PRM, a judge, self-evaluation) is worth running inside a search only if its time overlaps
the backend's: a GPU that waits for a PRM is idle. The runner gives every search one ``Timeline``; the
policy wrapper records each generation request as an interval, ``search.evaluators.evaluate`` each
evaluation, and the run summary reports the share of evaluator time during which a generation (of any tree)
was in flight. Generations an evaluator makes itself (a judge's verdicts) are its own work, not overlap:
they run under ``evaluating()`` and are not recorded as generation.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from dataclasses import dataclass, field

_IN_EVALUATOR: contextvars.ContextVar[bool] = contextvars.ContextVar("treepref_in_evaluator", default=False)

Interval = tuple[float, float]


def merged(intervals: list[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, disjoint intervals."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def length(intervals: list[Interval]) -> float:
    return sum(b - a for a, b in merged(intervals))


def intersection(a: list[Interval], b: list[Interval]) -> float:
    """Total time covered by both unions."""
    a, b = merged(a), merged(b)
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


@dataclass
class Timeline:
    generation: list[Interval] = field(default_factory=list)
    evaluation: list[Interval] = field(default_factory=list)

    @contextlib.contextmanager
    def generating(self):
        """Around one generation request (not recorded when an evaluator makes it)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if not _IN_EVALUATOR.get():
                self.generation.append((start, time.perf_counter()))

    @contextlib.contextmanager
    def evaluating(self):
        """Around one evaluation; generations inside it count as the evaluator's own work."""
        token = _IN_EVALUATOR.set(True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.evaluation.append((start, time.perf_counter()))
            _IN_EVALUATOR.reset(token)

    def summary(self) -> dict:
        """Evaluator time (seconds, union) and the share of it that overlapped generation (None: no
        evaluator ran)."""
        busy = length(self.evaluation)
        return {"evaluator_s": round(busy, 3),
                "evaluator_overlap": round(intersection(self.evaluation, self.generation) / busy, 3) if busy else None}
