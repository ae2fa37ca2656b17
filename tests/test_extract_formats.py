"""Exports on the hand-built example tree: exact rows per format, datasets round trips, errors."""

from __future__ import annotations

import importlib.util
import json

import datasets
import pytest

from treepref.envs.reasoning import plain_template
from treepref.extract import FORMATS, RULES, export, template_from_tokenizer, write_export
from treepref.extract.examples import example_tree
from treepref.extract.rules import visit_weight
from treepref.extract.stats import margin_histogram

Q = "What is 2 + 3 * 4?"
P0 = f"<user>\n{Q}\n<assistant>\n"
S1, S2 = "3 * 4 = 12.", "2 + 3 = 5."
S3, S4 = "2 + 12 = 14. The answer is 14.", "2 + 12 = 15. The answer is 15."
S5, S6 = "5 * 4 = 20. The answer is 20.", "So 5 * 4 = 20. The answer is 20."
S8 = "3 * 4 = 12, and 2 + 12 = 14. The answer is 14."
HAS_STEPWISE = importlib.util.find_spec("treepref.extract.stepwise") is not None


def rows(fmt, **kw):
    kw.setdefault("template", plain_template)
    ds, stats = export([example_tree()], fmt, system=None, recipe="r", **kw)
    return ds.to_list(), stats


def pair(prompt, chosen, rejected, prefix, cv, rv, depth, nc, nr, strategy, weight=1.0):
    return {"problem_id": "p1", "recipe": "r", "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "question": Q, "prefix_steps": prefix, "chosen_value": cv, "rejected_value": rv,
            "margin": cv - rv, "depth": depth, "chosen_visits": nc, "rejected_visits": nr,
            "strategy": strategy, "weight": weight}


def test_step_pairs_max_min():
    got, stats = rows("step_pairs")
    assert got == [
        pair(P0, S1 + "\n\n", S2 + "\n\n", [], 0.75, 0.0, 1, 4, 2, "max_min"),
        pair(P0 + S1 + "\n\n", S3 + "\n\n", S4 + "\n\n", [S1], 1.0, 0.0, 2, 3, 1, "max_min"),
    ]
    assert stats["rows"] == 2 and stats["rows_per_problem"] == {"p1": 2} and stats["share_with_rows"] == 1.0
    assert stats["generated_tokens"] == 85 and stats["generated_tokens_per_row"] == 42.5
    assert stats["margin_histogram"] == {"0.70": 1, "1.00": 1}


def test_step_pairs_visit_weight_and_other_values():
    got, _ = rows("step_pairs", weight="visits")
    assert [r["weight"] for r in got] == [2 / 3, 1 / 2]
    got, _ = rows("step_pairs", value="mc")  # only the depth-1 steps have MC counts
    assert [(r["chosen"], r["chosen_value"], r["rejected_value"]) for r in got] == [(S1 + "\n\n", 0.75, 0.0)]
    got, _ = rows("step_pairs", value="prm")
    assert [(r["chosen_value"], r["rejected_value"]) for r in got] == [(0.9, 0.2)]
    got, _ = rows("step_pairs", value="reward")  # root: only node 8 has a reward; node 1: 3 vs 4
    assert [(r["chosen"], r["rejected"]) for r in got] == [(S3 + "\n\n", S4 + "\n\n")]


def test_step_pairs_conversational():
    got, _ = rows("step_pairs", layout="conversational", template=None)
    user = {"role": "user", "content": Q}
    assert [r["prompt"] for r in got] == [[user], [user, {"role": "assistant", "content": S1 + "\n\n"}]]
    assert got[1]["chosen"] == [{"role": "assistant", "content": S3 + "\n\n"}]
    assert got[1]["rejected"] == [{"role": "assistant", "content": S4 + "\n\n"}]


def test_rules_on_example():
    def strategies(rule, **kw):
        got, _ = rows("step_pairs", rule=rule, **kw)
        return [(r["chosen"].strip(), r["rejected"].strip(), r["strategy"]) for r in got]

    assert strategies("best_runner_up") == [(S1, S2, "best_runner_up"), (S3, S4, "best_runner_up")]
    assert strategies("margin", margin=0.8) == [(S3, S4, "margin")]
    assert strategies("q_sign", threshold=0.5) == [(S1, S2, "q_sign"), (S3, S4, "q_sign")]
    assert strategies("q_sign") == []  # 0/1 values: nothing below 0
    # S3 and S4 differ in 2 characters
    assert strategies("margin_edit", margin=0.5, edit=2) == [(S1, S2, "margin_edit"), (S3, S4, "margin_edit")]
    assert strategies("margin_edit", margin=0.5, edit=3) == [(S1, S2, "margin_edit")]
    # successful path: 0 -> 1 -> 3 (and the refinement 8). Off-path at the root: 2 and 7; under 1: 4.
    assert strategies("on_off_path") == [(S1, S2, "on_off_path"), (S1, "Let me think.", "on_off_path"),
                                         (S8, S2, "on_off_path"), (S8, "Let me think.", "on_off_path"),
                                         (S3, S4, "on_off_path")]


def test_step_dpo():
    got, _ = rows("step_dpo", template=None)
    base = {"problem_id": "p1", "recipe": "r", "prompt": Q, "answer": "14", "strategy": "max_min"}
    assert got == [
        {**base, "initial_reason_steps": "", "chosen": S1 + "\n\n", "rejected": S2 + "\n\n",
         "full_chosen": f"{S1}\n\n{S3}\n\n", "full_rejected": f"{S2}\n\n{S5}\n\n",
         "chosen_value": 0.75, "rejected_value": 0.0, "margin": 0.75, "depth": 1},
        {**base, "initial_reason_steps": S1 + "\n\n", "chosen": S3 + "\n\n", "rejected": S4 + "\n\n",
         "full_chosen": S3 + "\n\n", "full_rejected": S4 + "\n\n",
         "chosen_value": 1.0, "rejected_value": 0.0, "margin": 1.0, "depth": 2},
    ]
    got = [{k: r[k] for k in ("prompt", "initial_reason_steps", "chosen")} for r in got]
    assert got[1] == {"prompt": Q, "initial_reason_steps": S1 + "\n\n", "chosen": S3 + "\n\n"}


def test_step_apo():
    got, _ = rows("step_apo", threshold=0.5)
    assert got == [
        {**pair(P0, S1 + "\n\n", S2 + "\n\n", [], 0.75, 0.0, 1, 4, 2, "q_sign"), "q_chosen": 0.75,
         "q_rejected": 0.0},
        {**pair(P0 + S1 + "\n\n", S3 + "\n\n", S4 + "\n\n", [S1], 1.0, 0.0, 2, 3, 1, "q_sign"),
         "q_chosen": 1.0, "q_rejected": 0.0},
    ]


def test_ranked_lists():
    base = {"problem_id": "p1", "recipe": "r", "question": Q}
    got, _ = rows("ranked_lists")
    assert got == [
        {**base, "prompt": P0, "responses": [[S1, S3], [S2, S5]], "scores": [0.75, 0.0],
         "step_rewards": [[0.75, 1.0], [0.0, 0.0]], "prefix_steps": [], "depth": 1, "strategy": "ranked_paths"},
        {**base, "prompt": P0 + S1 + "\n\n", "responses": [[S3], [S4]], "scores": [1.0, 0.0],
         "step_rewards": [[1.0], [0.0]], "prefix_steps": [S1], "depth": 2, "strategy": "ranked_paths"},
    ]
    got, _ = rows("ranked_lists", responses="siblings", value="prm")
    assert [(r["responses"], r["scores"], r["strategy"]) for r in got] == [
        ([[S1], [S2]], [0.9, 0.2], "ranked_siblings")]


def test_refine_pairs():
    got, _ = rows("refine_pairs", value="reward")
    assert got == [{"problem_id": "p1", "recipe": "r", "prompt": P0, "chosen": S8, "rejected": "Let me think.",
                    "critique": "No progress: compute 3 * 4 first.", "question": Q, "chosen_value": 1.0,
                    "rejected_value": None, "margin": None, "strategy": "refines"}]
    got, _ = rows("refine_pairs", layout="conversational")
    assert got[0]["prompt"] == [{"role": "user", "content": Q}]
    assert got[0]["chosen"] == [{"role": "assistant", "content": S8}]


def test_trajectory_pairs():
    got, stats = rows("trajectory_pairs")
    good = [(f"{S1}\n\n{S3}", [S1, S3]), (S8, [S8])]
    bad = [(f"{S1}\n\n{S4}", [S1, S4]), (f"{S2}\n\n{S5}", [S2, S5]), (f"{S2}\n\n{S6}", [S2, S6])]
    assert got == [{"problem_id": "p1", "recipe": "r", "prompt": P0, "chosen": c, "rejected": r,
                    "question": Q, "chosen_reward": 1.0, "rejected_reward": 0.0, "margin": 1.0,
                    "chosen_steps": cs, "rejected_steps": rs, "strategy": "outcome"}
                   for c, cs in good for r, rs in bad]
    got, _ = rows("trajectory_pairs", max_per_problem=2)
    assert len(got) == 2


def test_trees():
    tree = example_tree()
    got, _ = rows("trees")
    assert len(got) == 1
    row = got[0]
    assert {k: row[k] for k in ("problem_id", "recipe", "prompt", "answer", "meta")} == {
        "problem_id": "p1", "recipe": "r", "prompt": [{"role": "user", "content": Q}], "answer": "14", "meta": "{}"}
    assert row["stats"] == {"nodes": 9, "step_nodes": 8, "rollout_nodes": 1, "max_depth": 2,
                            "generated_tokens": 85, "terminated": 5, "solved": True}
    assert row["nodes"][1] == {"id": 1, "parent": 0, "depth": 1, "kind": "step", "text": S1, "n_tokens": 6,
                               "logprob": 0.0, "prior": 1.0, "visits": 4, "value": 0.75, "reward": None,
                               "terminated": False, "truncated": False, "samples": 1,
                               "scores": '{"prm": 0.9}', "mc": {"correct": 3, "total": 4}, "info": "{}",
                               "children": [3, 4]}
    assert [n["children"] for n in row["nodes"]] == [[1, 2, 7, 8], [3, 4], [5, 6], [], [], [], [], [], []]
    assert [n["text"] for n in row["nodes"]] == tree.text
    assert json.loads(row["nodes"][8]["info"]) == tree.info[8]


@pytest.mark.skipif(not HAS_STEPWISE, reason="treepref.extract.stepwise not written yet")
def test_stepwise_delegates():
    from treepref.extract.stepwise import stepwise_rows

    got, _ = rows("stepwise", template=None)  # default labels: Monte Carlo counts
    want = stepwise_rows(example_tree(), source="mc")
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["problem_id"] == "p1" and g["recipe"] == "r"
        assert all(g[k] == v for k, v in w.items() if k not in ("problem_id", "recipe"))
    got, _ = rows("stepwise", template=None, value="prm", threshold=0.5)
    assert [(r["completions"], r["labels"]) for r in got] == [([S1], [True]), ([S2], [False])]
    with pytest.raises(ValueError, match="stepwise labels"):
        rows("stepwise", value="value")


def test_filters_and_dedup():
    got, stats = rows("step_pairs", rule="margin", min_margin=0.8)
    assert [r["margin"] for r in got] == [1.0] and stats["dropped"]["min_margin"] == 1
    got, _ = rows("step_pairs", rule="margin", min_edit=3)
    assert [r["chosen"].strip() for r in got] == [S1]
    got, _ = rows("step_pairs", rule="margin", max_per_problem=1)
    assert [r["margin"] for r in got] == [1.0]  # the largest margin is kept
    t = example_tree()
    t.add(0, S2, n_tokens=1)  # an identical step under the same prefix, with a larger value
    for _ in range(4):
        t.backup(len(t) - 1, 0.0)
    ds, stats = export([t, t], "step_pairs", template=plain_template, system=None)
    assert len(ds) == 2 and stats["dropped"]["duplicates"] == 2


def test_errors():
    tree = example_tree()
    with pytest.raises(ValueError, match="unknown format"):
        export([tree], "nope", template=plain_template)
    with pytest.raises(ValueError, match="unknown rule"):
        export([tree], "step_pairs", template=plain_template, rule="nope")
    with pytest.raises(ValueError, match="unknown option 'edit'"):
        export([tree], "step_pairs", template=plain_template, rule="margin", edit=3)
    with pytest.raises(ValueError, match="takes no pair rule"):
        export([tree], "ranked_lists", template=plain_template, rule="max_min")
    with pytest.raises(ValueError, match="unknown value"):
        export([tree], "step_pairs", template=plain_template, value="nothing")
    with pytest.raises(ValueError, match="unknown layout"):
        export([tree], "step_pairs", template=plain_template, layout="chat")
    with pytest.raises(ValueError, match="only the layouts"):
        export([tree], "step_dpo", layout="conversational")
    with pytest.raises(ValueError, match="needs a template"):
        export([tree], "step_pairs")


def test_visit_weight_and_histogram():
    assert visit_weight(0, 5) == 0.0 and visit_weight(3, 1) == 0.5 and visit_weight(3, 3, k=3) == 0.5
    assert margin_histogram([0.05, 0.1, 0.19, 1.0, -0.3]) == {"-0.30": 1, "0.00": 1, "0.10": 2, "1.00": 1}


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "stepwise" or HAS_STEPWISE])
def test_round_trip(fmt, tmp_path):
    kw = {"refine_pairs": {"value": "reward"}, "step_apo": {"threshold": 0.5}}.get(fmt, {})
    stats = write_export([example_tree()], tmp_path / fmt, fmt, template=plain_template, recipe="r", **kw)
    ds, _ = export([example_tree()], fmt, template=plain_template, recipe="r", **kw)
    loaded = datasets.load_from_disk(str(tmp_path / fmt / "dataset"))
    assert loaded.to_list() == ds.to_list() and len(ds) > 0
    lines = (tmp_path / fmt / "rows.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == ds.to_list()
    assert json.loads((tmp_path / fmt / "stats.json").read_text()) == json.loads(json.dumps(stats))
    write_export([example_tree()], tmp_path / fmt, fmt, template=plain_template, **kw)  # replaces in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [fmt]
    assert list(ds.column_names) == list(FORMATS[fmt].columns) or fmt == "stepwise"


def test_empty_export_round_trips(tmp_path):
    stats = write_export([example_tree()], tmp_path / "e", "step_apo", template=plain_template)
    loaded = datasets.load_from_disk(str(tmp_path / "e" / "dataset"))
    assert len(loaded) == 0 and loaded.column_names == list(FORMATS["step_apo"].columns)
    assert stats["rows"] == 0 and stats["share_with_rows"] == 0.0 and stats["generated_tokens_per_row"] is None


def test_smollm2_chat_template(model_dir):
    template = template_from_tokenizer(model_dir)
    got, _ = rows("step_pairs", template=template)
    head = f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" \
           f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
    assert [r["prompt"] for r in got] == [head, head + S1 + "\n\n"]


def test_names_are_listed():
    assert set(RULES) == {"max_min", "best_runner_up", "margin", "q_sign", "margin_edit", "on_off_path"}
    assert set(FORMATS) == {"step_pairs", "step_dpo", "step_apo", "ranked_lists", "stepwise", "refine_pairs",
                            "trees", "trajectory_pairs"}
