"""Rules that pick preference pairs among the children of one node.

A rule is a plain function ``rule(tree, parent, children, *, value, **options) -> list[Pair]``:
``children`` are the candidate child ids (STEP nodes unless the export asks otherwise) and ``value``
reads a node's value (see ``common.value_reader``). Children whose value is None are skipped by every
rule except ``on_off_path``, whose choice is structural. Every pair records the rule's name as its
``strategy``. Ties go to the child created first, so the output is deterministic.
"""

from __future__ import annotations

import itertools
from typing import Callable

from treepref.extract.common import Pair, ValueReader, edit_distance, success_nodes
from treepref.registry import Registry
from treepref.tree import Tree

Rule = Callable[..., list[Pair]]


def _valued(tree: Tree, children: list[int], value: ValueReader) -> list[tuple[int, float]]:
    out = []
    for c in children:
        v = value(tree, c)
        if v is not None:
            out.append((c, float(v)))
    return out


def _pair(parent: int, a: tuple[int, float], b: tuple[int, float], strategy: str) -> Pair:
    return Pair(parent, a[0], b[0], a[1], b[1], strategy)


def _ranked(tree: Tree, children: list[int], value: ValueReader) -> list[tuple[int, float]]:
    """Valued children, best first; equal values keep creation order."""
    return sorted(_valued(tree, children, value), key=lambda cv: -cv[1])


def max_min(tree: Tree, parent: int, children: list[int], *, value: ValueReader) -> list[Pair]:
    """The best child against the worst (MCTS-DPO, Agent Q); nothing when all values are equal."""
    ranked = _ranked(tree, children, value)
    if len(ranked) < 2 or ranked[0][1] <= ranked[-1][1]:
        return []
    worst = min(ranked, key=lambda cv: cv[1])  # first created among the equally worst
    return [_pair(parent, ranked[0], worst, "max_min")]


def best_runner_up(tree: Tree, parent: int, children: list[int], *, value: ValueReader) -> list[Pair]:
    """The best child against the best of those strictly worse than it (the hardest informative pair)."""
    ranked = _ranked(tree, children, value)
    if not ranked:
        return []
    lower = [cv for cv in ranked if cv[1] < ranked[0][1]]
    return [_pair(parent, ranked[0], lower[0], "best_runner_up")] if lower else []


def margin(tree: Tree, parent: int, children: list[int], *, value: ValueReader,
           margin: float = 0.0) -> list[Pair]:
    """Every ordered pair whose value difference is positive and at least ``margin`` (Tree-PLV)."""
    ranked = _ranked(tree, children, value)
    return [_pair(parent, a, b, "margin") for a, b in itertools.combinations(ranked, 2)
            if a[1] - b[1] > 0 and a[1] - b[1] >= margin]


def q_sign(tree: Tree, parent: int, children: list[int], *, value: ValueReader,
           threshold: float = 0.0) -> list[Pair]:
    """Step-APO: every child with Q > ``threshold`` against every child with Q < ``threshold``.

    Step-APO's values are terminal ±1 backed up, so the split is at 0; with 0/1 rewards use 0.5.
    """
    valued = _valued(tree, children, value)
    pos = [cv for cv in valued if cv[1] > threshold]
    neg = [cv for cv in valued if cv[1] < threshold]
    return [_pair(parent, a, b, "q_sign") for a in pos for b in neg]


def margin_edit(tree: Tree, parent: int, children: list[int], *, value: ValueReader,
                margin: float = 0.5, edit: int = 20) -> list[Pair]:
    """Pairs whose value difference is ≥ ``margin`` and whose step texts differ by ≥ ``edit`` characters
    (Levenshtein): near-identical steps with different values teach little and are often label noise."""
    ranked = _ranked(tree, children, value)
    return [_pair(parent, a, b, "margin_edit") for a, b in itertools.combinations(ranked, 2)
            if a[1] - b[1] > 0 and a[1] - b[1] >= margin
            and edit_distance(tree.text[a[0]], tree.text[b[0]]) >= edit]


def on_off_path(tree: Tree, parent: int, children: list[int], *, value: ValueReader,
                success: float = 1.0) -> list[Pair]:
    """TP-LLaMA / Agent Q: on a successful path (one ending in a terminated STEP node with reward ≥
    ``success``) the on-path child is chosen and each sibling not on any successful path is rejected.

    Values are recorded when present but not required.
    """
    ok = success_nodes(tree, success)
    if parent not in ok:
        return []
    on = [c for c in children if c in ok]
    off = [c for c in children if c not in ok]
    def v(n: int) -> float | None:
        x = value(tree, n)
        return None if x is None else float(x)

    return [Pair(parent, a, b, v(a), v(b), "on_off_path") for a in on for b in off]


RULES = Registry("rule", {
    "max_min": max_min,
    "best_runner_up": best_runner_up,
    "margin": margin,
    "q_sign": q_sign,
    "margin_edit": margin_edit,
    "on_off_path": on_off_path,
})

# Rules that order a pair by the value they read (chosen_value >= rejected_value always holds).
VALUE_ORDERED = ("max_min", "best_runner_up", "margin", "q_sign", "margin_edit")


def visit_weight(chosen_visits: int, rejected_visits: int, k: float = 1.0) -> float:
    """Confidence in a pair from the visits behind its two values: ``n / (n + k)``, n = the smaller count.

    A Q estimate from n visits has a standard error ∝ 1/√n, so a pair is only as trustworthy as its
    less-visited side; ``k`` is a pseudo-count (the visits at which confidence is one half). 0 visits give
    weight 0. Use it as a per-pair loss weight, or as conservative DPO's label smoothing
    ``ε = (1 − weight) / 2`` (MCTS-DPO adapts the smoothing to visit statistics; ε = 0.5 means no signal).
    """
    n = min(chosen_visits, rejected_visits)
    return n / (n + k) if n > 0 else 0.0
