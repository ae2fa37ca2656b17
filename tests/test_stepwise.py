"""TRL stepwise-supervision rows from MC counts and from scores."""

from __future__ import annotations

from treepref.extract.stepwise import stepwise_rows, to_dataset
from treepref.tree import ROLLOUT, ROOT, Tree


def small_tree() -> Tree:
    t = Tree(problem_id="p", prompt="What is 2 + 3?", answer="5")
    a = t.add(ROOT, "a")
    b = t.add(a, "The answer is 5.", terminated=True, reward=1.0)
    c = t.add(a, "c")
    t.add(c, "rollout step", kind=ROLLOUT)  # rollouts are evidence, not exported paths
    t.mc_correct[a], t.mc_total[a] = 3, 4
    t.mc_correct[c], t.mc_total[c] = 0, 4
    t.scores[a]["omegaprm"], t.scores[c]["omegaprm"] = 1.0, 0.0
    return t


def test_rows_from_mc_counts():
    rows = stepwise_rows(small_tree())
    assert [r["completions"] for r in rows] == [["a", "The answer is 5."], ["a", "c"]]
    assert rows[0]["labels"] == [True, True] and rows[0]["soft_labels"] == [0.75, 1.0]  # final: its reward
    assert rows[1]["labels"] == [True, False] and rows[1]["soft_labels"] == [0.75, 0.0]
    assert rows[0]["final_reward"] == 1.0 and rows[0]["label_source"] == "mc" and rows[0]["problem_id"] == "p"


def test_rows_from_scores_cut_at_unlabelled_step():
    rows = stepwise_rows(small_tree(), source="omegaprm")
    # The final step "The answer is 5." has no omegaprm score: that path is cut after "a".
    assert [(r["completions"], r["labels"], r["complete"]) for r in rows] == [
        (["a"], [True], False), (["a", "c"], [True, False], True)]
    assert stepwise_rows(small_tree(), source="prm") == []
    every = stepwise_rows(small_tree(), paths="all")
    assert len(every) == 3


def test_to_dataset_columns():
    ds = to_dataset(stepwise_rows(small_tree()))
    assert {"prompt", "completions", "labels", "soft_labels", "label_source", "problem_id"} <= set(ds.column_names)
    assert ds[1]["labels"] == [True, False]


def test_rows_from_outcomes_label_every_step_by_how_its_path_ended():
    """An ORM's targets: no value inside the tree is read, so a flat sample (a chain) is labelled too."""
    t = Tree(problem_id="p", prompt="What is 2 + 3 * 4?", answer="14")
    right = t.add(t.add(ROOT, "3 * 4 = 12"), "2 + 12 = 14. The answer is 14.", terminated=True, reward=1.0)
    wrong = t.add(t.add(ROOT, "2 + 3 = 5"), "5 * 4 = 20. The answer is 20.", terminated=True, reward=0.0)
    t.add(t.add(ROOT, "3 * 4 = 12"), "12 + ")  # cut off before an answer: no outcome, no row
    rows = stepwise_rows(t, source="outcome")
    assert [(r["completions"], r["labels"], r["soft_labels"]) for r in rows] == [
        (["3 * 4 = 12", "2 + 12 = 14. The answer is 14."], [True, True], [1.0, 1.0]),
        (["2 + 3 = 5", "5 * 4 = 20. The answer is 20."], [False, False], [0.0, 0.0])]
    assert [r["node_ids"][-1] for r in rows] == [right, wrong]
    # A node's own counts do not enter: the first step of the right path would be labelled False by mc.
    t.mc_correct[t.parent[right]], t.mc_total[t.parent[right]] = 0, 4
    assert stepwise_rows(t, source="outcome")[0]["labels"] == [True, True]
    assert stepwise_rows(small_tree(), source="outcome")[0]["labels"] == [True, True]  # its one finished path


def test_outcome_labels_only_stepwise_rows():
    import pytest

    from treepref.extract.api import export

    with pytest.raises(ValueError, match="format 'step_pairs'"):
        export([small_tree()], "step_pairs", value="outcome", template=None)
    ds, stats = export([small_tree()], "stepwise", value="outcome", template=None)
    assert ds["labels"] == [[True, True]] and stats["value"] == "outcome"


def consensus_tree() -> Tree:
    """Four first steps of 17 - 2 * 3, each with Monte Carlo counts, and what a second signal says of them."""
    t = Tree(problem_id="c", prompt="What is 17 - 2 * 3?", answer="11")
    agree_right = t.add(ROOT, "2 * 3 = 6", info={"step_check": True})  # MC 2/4 right, check right: kept
    lucky = t.add(ROOT, "17 - 2 = 15", info={"step_check": True})       # MC 0/4, check right: disagree
    unchecked = t.add(ROOT, "First, think.", info={"step_check": None})  # prose: judged wrong, MC 1/4
    judged = t.add(ROOT, "Multiply first.", info={"step_check": None})   # prose: judged right, MC 3/4
    undecided = t.add(ROOT, "Hmm.", info={"step_check": None})           # the judge split 2-2: no verdict
    for node, c, judge in ((agree_right, 2, None), (lucky, 0, None), (unchecked, 1, 0.25), (judged, 3, 0.75),
                           (undecided, 4, 0.5)):
        t.mc_correct[node], t.mc_total[node] = c, 4
        if judge is not None:
            t.scores[node]["judge"] = judge
    end = t.add(agree_right, "17 - 6 = 11. The answer is 11.", terminated=True, reward=1.0,
                info={"step_check": True})
    slip = t.add(lucky, "15 * 3 = 44", terminated=True, reward=0.0, info={"step_check": False})
    return t, {"agree_right": agree_right, "lucky": lucky, "unchecked": unchecked, "judged": judged,
               "undecided": undecided, "end": end, "slip": slip}


def test_consensus_keeps_a_monte_carlo_label_only_where_a_second_signal_agrees():
    from treepref.extract.labels import consensus_label

    t, n = consensus_tree()
    assert consensus_label(t, n["agree_right"]) == (True, 0.5)
    assert consensus_label(t, n["lucky"]) is None        # MC says wrong, the check says right
    assert consensus_label(t, n["unchecked"]) is None    # MC says right (1 of 4), the judge says wrong
    assert consensus_label(t, n["judged"]) == (True, 0.75)
    assert consensus_label(t, n["undecided"]) is None
    assert consensus_label(t, n["slip"]) == (False, 0.0)  # a final step: its outcome
    rows = stepwise_rows(t, source="consensus")
    assert [(r["completions"], r["labels"], r["soft_labels"]) for r in rows] == [
        (["Multiply first."], [True], [0.75]),  # a path is cut at its first step without consensus
        (["2 * 3 = 6", "17 - 6 = 11. The answer is 11."], [True, True], [0.5, 1.0])]
    assert rows[0]["label_source"] == "consensus"
    mc = stepwise_rows(t, source="mc")
    assert [r["labels"] for r in mc if r["completions"][0] in ("17 - 2 = 15", "First, think.")] == [
        [True], [False, False]]  # what Monte Carlo alone says of the steps consensus leaves out


def test_consensus_is_a_value_every_export_reads_and_needs_a_second_signal():
    import pytest

    from treepref.extract.api import export

    t, n = consensus_tree()
    ds, stats = export([t], "step_pairs", rule="max_min", value="consensus", prefix=None, min_visits=None,
                       template=lambda messages: messages[-1]["content"])
    assert [(r["chosen"].strip(), r["rejected"].strip()) for r in ds] == [("Multiply first.", "2 * 3 = 6")]
    assert stats["value"] == "consensus"
    bare = Tree(problem_id="b", prompt="Q?", answer="1")
    bare.add(ROOT, "x")
    with pytest.raises(ValueError, match="value='consensus'.*no step has one"):
        export([bare], "stepwise", value="consensus", template=None)
