"""Progress, read from a tree: the values the ``advantage`` evaluator (``search.prover``) recorded, and the
advantage A(step) = V(after) − V(before) they give (PAV; Setlur et al. 2024, "Rewarding Progress").

Searches and exports read progress through these two functions, so a final step (never valued by a search: its
outcome is its value) has an advantage too, and a right answer ranks against its siblings.
"""

from __future__ import annotations

from treepref.envs.base import is_success
from treepref.tree import NO_PARENT, ROOT, Tree

VALUE_KEY = "prover_value"  # tree.scores: V after the step, from the prover's completions
ADVANTAGE_KEY = "advantage"  # tree.scores: V after less V before (None at the root)


def prover_value(tree: Tree, node: int, success: float = 1.0) -> float | None:
    """V(node): the share of the prover's completions from the node's state that reached a right answer, as
    recorded. A final step's is its own outcome (1 solved, else 0): nothing follows it. None for a node never
    valued."""
    v = tree.scores[node].get(VALUE_KEY)
    if v is not None:
        return float(v)
    if node != ROOT and tree.is_final(node):
        return 1.0 if tree.terminated[node] and is_success(tree.reward[node], tree.info[node], success) else 0.0
    return None


def advantage(tree: Tree, node: int, success: float = 1.0) -> float | None:
    """A(node) = V(node) − V(parent), the progress the step into ``node`` made (a final step's: its outcome less
    its parent's value); None at the root or where either value is missing."""
    parent = tree.parent[node]
    if parent == NO_PARENT:
        return None
    before, after = prover_value(tree, parent, success), prover_value(tree, node, success)
    return None if before is None or after is None else after - before


def as_unit(a: float) -> float:
    """An advantage in [-1, 1] as a number in [0, 1], (1 + A) / 2: a stepwise soft label (0.5: the step lost no
    ground and made none) and the value a ``pav`` evaluator backs up, on the scale of success probabilities."""
    return (1.0 + float(a)) / 2
