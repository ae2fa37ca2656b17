"""TRL's stepwise-supervision export: one row per solution path, one label per step.

Columns follow TRL's ``stepwise_supervision`` dataset type (``prompt``, ``completions``: the steps,
``labels``: one bool per step), plus ``soft_labels`` (a float per step, for soft BCE targets),
``label_source``, ``problem_id`` and metadata (node ids, MC counts, final reward), and the token ids the
policy saw: ``prompt_ids`` (the rendered prompt, chat template included, unlike the ``prompt`` text which is
the raw problem) and ``completions_ids`` (each step's ids as generated, delimiter included, where
``completions`` holds the text without it). A tree without ids (older runs) gives ``prompt_ids == []`` and
one ``[]`` per step, never partial ids.

Label sources:
  * ``"mc"``: Monte Carlo counts on each node (Math-Shepherd): hard = any completion correct, soft = share
    correct. A final node without counts is labelled by its own reward.
  * any other name (``"omegaprm"``, ``"prm"``, ``"judge"``, ...): ``scores[name]`` on each node, read as pair
    rules read it (``common.value_reader``: ``prover_value`` also for final steps); the hard label is
    ``score >= threshold``.
  * ``"advantage"``: PAV's progress A = V(after) − V(before) under the prover (``verifiers.progress``; a final
    step's from its outcome). The soft label is ``(1 + A) / 2``, so it stays a BCE target in [0, 1] and the
    default threshold 0.5 labels a step good when it lost no ground (A >= 0); rows also carry ``advantages``
    (A per step), ``prover_values`` (V at the prompt, then after each step: ``advantages[i] =
    prover_values[i + 1] - prover_values[i]``) and the counts behind them, ``prover_correct`` / ``prover_total``
    (None for a final step, valued by its outcome).
  * ``"consensus"``: the Monte Carlo label kept only where a second signal agrees (the step check's verdict,
    else the policy-as-judge's majority; ``extract.labels``); a step without agreement is unlabelled, so the
    path is cut there. A final step is labelled by its outcome.
  * ``"outcome"``: every step of a path labelled by how the path ended (hard = the final node succeeded, soft
    = its reward): an outcome verifier's (ORM's) targets, read at every prefix as Uesato et al. train one. It
    needs no values inside the tree, so flat samples give it too; a path that did not end in a scored final
    node is dropped.
A path is cut at its first unlabelled step (TRL needs a label for every step), and dropped when nothing
is labelled. Only ``step`` nodes form paths (older trees kept completions as ``rollout`` chains). In newer
trees completions are steps too, so a path through a completion ends where its labels do: deduplication
keeps one row per labelled prefix.
"""

from __future__ import annotations

from typing import Iterable

from treepref.extract.common import CONSENSUS, OUTCOME, value_reader
from treepref.extract.labels import consensus_label, mc_label, outcome_label
from treepref.tree import ROOT, STEP, Tree
from treepref.verifiers.progress import advantage, as_unit, prover_value


def _label(tree: Tree, node: int, source: str, threshold: float) -> tuple[bool, float] | None:
    if source == "mc":
        return mc_label(tree, node)
    if source == CONSENSUS:
        return consensus_label(tree, node)
    score = value_reader(source)(tree, node)
    if score is None:
        return None
    soft = as_unit(score) if source == "advantage" else float(score)
    return soft >= threshold, soft


def _progress_columns(tree: Tree, nodes: list[int]) -> dict:
    """What an advantage row's labels came from: A per step, and V at the prompt and after each step."""
    states = [tree.parent[nodes[0]], *nodes]
    counts = [tree.info[n].get("prover", {}) for n in states]
    return {"advantages": [advantage(tree, n) for n in nodes],
            "prover_values": [prover_value(tree, n) for n in states],
            "prover_correct": [c.get("correct") for c in counts],
            "prover_total": [c.get("total") for c in counts]}


def path_ends(tree: Tree, *, paths: str = "leaves") -> list[int]:
    """End nodes of the exported paths: ``"leaves"`` (step nodes with no step child) or ``"all"`` (every
    step node, i.e. every prefix)."""
    kids = tree.children_map()
    steps = [i for i in tree.nodes(STEP) if i != 0]
    if paths == "all":
        return steps
    if paths != "leaves":
        raise ValueError(f"paths must be 'leaves' or 'all', got {paths!r}")
    return [i for i in steps if not any(tree.kind[c] == STEP for c in kids[i])]


def stepwise_rows(tree: Tree, *, source: str = "mc", threshold: float = 0.5, paths: str = "leaves",
                  recipe: str | None = None) -> list[dict]:
    """One TRL stepwise-supervision row per path of ``tree``, labelled from ``source``."""
    rows = []
    for end in path_ends(tree, paths=paths):
        nodes, labels, soft = [], [], []
        outcome = outcome_label(tree, end) if source == OUTCOME else None
        if source == OUTCOME and outcome is None:
            continue
        for node in tree.path(end):
            lab = outcome or _label(tree, node, source, threshold)
            if lab is None:
                break
            nodes.append(node)
            labels.append(lab[0])
            soft.append(lab[1])
        if not nodes:
            continue
        last = nodes[-1]
        known = all(tree.token_ids[i] for i in (ROOT, *nodes))
        rows.append({
            "prompt": tree.prompt,
            "completions": [tree.text[i] for i in nodes],
            "labels": labels,
            "soft_labels": soft,
            "label_source": source,
            "problem_id": tree.problem_id,
            "recipe": recipe or tree.meta.get("recipe") or tree.meta.get("search"),
            "answer": tree.answer,
            "node_ids": nodes,
            "mc_correct": [tree.mc_correct[i] for i in nodes],
            "mc_total": [tree.mc_total[i] for i in nodes],
            "complete": last == end,
            "terminated": bool(tree.terminated[last]),
            "final_reward": tree.reward[last] if tree.terminated[last] else None,
            "prompt_ids": list(tree.token_ids[ROOT]) if known else [],
            "completions_ids": [list(tree.token_ids[i]) if known else [] for i in nodes],
        })
        if source == "advantage":
            rows[-1].update(_progress_columns(tree, nodes))
    return rows


def to_dataset(rows: Iterable[dict]):
    """A ``datasets.Dataset`` of stepwise rows (TRL's PRMTrainer reads prompt/completions/labels)."""
    from datasets import Dataset

    return Dataset.from_list(list(rows))
