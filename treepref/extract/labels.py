"""Step labels read off a tree: Monte Carlo, outcome, and consensus of Monte Carlo with a second signal.

Each label is ``(hard, soft)``: a bool and the number behind it. ``stepwise`` rows use them directly; the
consensus label is also a node value (:func:`consensus_value`) that every pair format and rule can read.

Consensus (after Qwen's lessons on PRMs: Monte Carlo labels are noisy, and labels on which Monte Carlo and a
second judge agree train better PRMs): a step keeps its Monte Carlo label only where a second signal says
the same. The second signal is the environment's step check where it passed a verdict
(``info["step_check"]``), else the policy-as-judge's pass rate (``scores["judge"]``, a strict majority
either way; exactly 0.5 is no verdict). A step without a second signal, or on which the two disagree, has no
label. A final step is labelled by its own outcome, which is exact and needs no second opinion.

With a step check as the second signal, a step it found false ends its path (a final step), so every
non-final step it judged is "right" by it: consensus then keeps the Monte Carlo positives among them and drops
the negatives, right steps whose completions failed and off-route steps with true arithmetic alike (on the
yield bench's d2 trees: 41 of 223 non-final labels under a right prefix kept, all right by the exact oracle,
where Monte Carlo alone was right on 151). A judge can say no to a true but useless step; a check cannot.
"""

from __future__ import annotations

from treepref.envs.base import is_success
from treepref.tree import Tree

Label = tuple[bool, float]


def outcome_label(tree: Tree, end: int) -> Label | None:
    """How the path to ``end`` ended: success and reward; None if it did not end in a scored final node."""
    if not tree.terminated[end] or tree.reward[end] is None:
        return None
    return is_success(tree.reward[end], tree.info[end]), float(tree.reward[end])


def mc_label(tree: Tree, node: int) -> Label | None:
    """Math-Shepherd's label: hard = any completion from the step reached the answer, soft = the share that
    did. A final step without counts is labelled by its own outcome."""
    if tree.mc_total[node]:
        return tree.mc_correct[node] > 0, tree.mc_correct[node] / tree.mc_total[node]
    return outcome_label(tree, node)


def second_signal(tree: Tree, node: int) -> bool | None:
    """The step check's verdict on the step, else the judge's strict majority; None when neither has one."""
    check = tree.info[node].get("step_check")
    if check is not None:
        return bool(check)
    judge = tree.scores[node].get("judge")
    if judge is None or judge == 0.5:
        return None
    return judge > 0.5


def consensus_label(tree: Tree, node: int) -> Label | None:
    """The Monte Carlo label where the second signal agrees with it (a final step: its outcome); else None."""
    if tree.terminated[node]:
        return outcome_label(tree, node)
    mc = mc_label(tree, node)
    if mc is None:
        return None
    return mc if second_signal(tree, node) is mc[0] else None


def consensus_value(tree: Tree, node: int) -> float | None:
    """The consensus label's soft value (the Monte Carlo share), as a node value rules and filters read."""
    label = consensus_label(tree, node)
    return None if label is None else label[1]


def has_second_signal(trees: list[Tree]) -> bool:
    """Whether any step of ``trees`` carries a second signal (so consensus can label anything)."""
    return any(second_signal(t, n) is not None for t in trees for n in range(1, len(t)))
