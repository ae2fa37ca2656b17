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
