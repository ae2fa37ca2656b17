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
from treepref.tree import ROOT, Tree

Q = "What is 2 + 3 * 4?"
P0 = f"<user>\n{Q}\n<assistant>\n"
S1, S2 = "3 * 4 = 12.", "2 + 3 = 5."
S3, S4 = "2 + 12 = 14. The answer is 14.", "2 + 12 = 15. The answer is 15."
S5, S6 = "5 * 4 = 20. The answer is 20.", "So 5 * 4 = 20. The answer is 20."
S8 = "3 * 4 = 12, and 2 + 12 = 14. The answer is 14."
HAS_STEPWISE = importlib.util.find_spec("treepref.extract.stepwise") is not None

# The pair filters are on by default (a successful prefix, two visits); these tests are about rules and
# formats on hand-built trees, so they export with the filters off unless a test is about a filter.
RAW = {"prefix": None, "min_visits": None}


def raw(fmt: str, kw: dict) -> dict:
    """``kw`` with the default pair filters off, for the formats that have them."""
    return {**RAW, **kw} if "prefix" in FORMATS[fmt].filters else kw


def rows(fmt, **kw):
    kw.setdefault("template", plain_template)
    ds, stats = export([example_tree()], fmt, system=None, recipe="r", **raw(fmt, kw))
    return ds.to_list(), stats


def pair(prompt, chosen, rejected, prefix, cv, rv, depth, nc, nr, strategy, weight=1.0):
    # In the example tree the depth-2 steps state answers (terminated); the depth-1 steps do not.
    final = depth == 2
    return {"problem_id": "p1", "recipe": "r", "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "question": Q, "prefix_steps": prefix, "chosen_value": cv, "rejected_value": rv,
            "margin": cv - rv, "depth": depth, "chosen_visits": nc, "rejected_visits": nr,
            "chosen_final": final, "rejected_final": final, "strategy": strategy, "weight": weight, "prompt_ids": [],
            "chosen_ids": [], "rejected_ids": [], "prefix_ids": [[] for _ in prefix]}


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
    base = {"problem_id": "p1", "recipe": "r", "prompt": Q, "answer": "14", "strategy": "max_min",
            **dict.fromkeys(("prompt_ids", "chosen_ids", "rejected_ids", "full_chosen_ids", "full_rejected_ids"),
                            [])}  # the example tree has no token ids
    assert got == [
        {**base, "initial_reason_steps": "", "chosen": S1 + "\n\n", "rejected": S2 + "\n\n",
         "full_chosen": f"{S1}\n\n{S3}\n\n", "full_rejected": f"{S2}\n\n{S5}\n\n",
         "chosen_value": 0.75, "rejected_value": 0.0, "margin": 0.75, "depth": 1,
         "chosen_final": False, "rejected_final": False, "full_chosen_final": True, "full_rejected_final": True},
        {**base, "initial_reason_steps": S1 + "\n\n", "chosen": S3 + "\n\n", "rejected": S4 + "\n\n",
         "full_chosen": S3 + "\n\n", "full_rejected": S4 + "\n\n",
         "chosen_value": 1.0, "rejected_value": 0.0, "margin": 1.0, "depth": 2,
         "chosen_final": True, "rejected_final": True, "full_chosen_final": True, "full_rejected_final": True},
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
    base = {"problem_id": "p1", "recipe": "r", "question": Q, "prompt_ids": [], "responses_ids": [[], []]}
    got, _ = rows("ranked_lists")
    assert got == [
        {**base, "prompt": P0, "responses": [[S1, S3], [S2, S5]], "scores": [0.75, 0.0],
         "step_rewards": [[0.75, 1.0], [0.0, 0.0]], "prefix_steps": [], "depth": 1, "strategy": "ranked_paths",
         "responses_final": [True, True]},
        {**base, "prompt": P0 + S1 + "\n\n", "responses": [[S3], [S4]], "scores": [1.0, 0.0],
         "step_rewards": [[1.0], [0.0]], "prefix_steps": [S1], "depth": 2, "strategy": "ranked_paths",
         "responses_final": [True, True]},
    ]
    got, _ = rows("ranked_lists", responses="siblings", value="prm")
    assert [(r["responses"], r["scores"], r["strategy"], r["responses_final"]) for r in got] == [
        ([[S1], [S2]], [0.9, 0.2], "ranked_siblings", [False, False])]


def test_refine_pairs():
    got, _ = rows("refine_pairs", value="reward")
    assert got == [{"problem_id": "p1", "recipe": "r", "prompt": P0, "chosen": S8, "rejected": "Let me think.",
                    "critique": "No progress: compute 3 * 4 first.", "question": Q, "chosen_value": 1.0,
                    "rejected_value": None, "margin": None, "refinements": 1, "strategy": "refines"}]
    got, _ = rows("refine_pairs", layout="conversational", value="reward")
    assert got[0]["prompt"] == [{"role": "user", "content": Q}]
    assert got[0]["chosen"] == [{"role": "assistant", "content": S8}]


def test_trajectory_pairs():
    got, stats = rows("trajectory_pairs")
    good = [(f"{S1}\n\n{S3}", [S1, S3]), (S8, [S8])]
    bad = [(f"{S1}\n\n{S4}", [S1, S4]), (f"{S2}\n\n{S5}", [S2, S5]), (f"{S2}\n\n{S6}", [S2, S6])]
    assert got == [{"problem_id": "p1", "recipe": "r", "prompt": P0, "chosen": c, "rejected": r,
                    "question": Q, "chosen_reward": 1.0, "rejected_reward": 0.0, "margin": 1.0,
                    "chosen_steps": cs, "rejected_steps": rs, "strategy": "outcome",
                    "chosen_final": True, "rejected_final": True,
                    "prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "prefix_ids": []}
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
    ds, stats = export([t, t], "step_pairs", template=plain_template, system=None, **RAW)
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
                            "trees", "trajectory_pairs", "refine_sft", "judge_pairs"}


# -- token ids and pair filters, on a tree with ids ------------------------------------------------------

def scored_tree() -> Tree:
    """Q?  (ids in brackets; value = backed-up mean)::

        0 root [1, 2]
        ├─ 1 "a" [11]            value 0.75 (4 visits), prm 0.9
        │  ├─ 3 "a1" [31, 32]    final, reward 1, value 1 (3 visits), prm 1.0
        │  └─ 4 "a2" [41]        final, reward 0, value 0 (1 visit), prm 0.0
        └─ 2 "b" [21, 22, 23]    value 2/3 (3 visits), prm 0.4
           ├─ 5 "b1" [51]        value 1 (2 visits), prm 0.8
           └─ 6 "b2" [61]        value 0 (1 visit), prm 0.1

    max_min pairs (value): under 0: 1 > 2 (margin 1/12); under 1: 3 > 4 (1); under 2: 5 > 6 (1).
    Successful path: 0, 1, 3; so the pair under 2 has a prefix off every successful path.
    """
    t = Tree(problem_id="s", prompt="Q?", answer="1")
    t.token_ids[ROOT] = [1, 2]
    a = t.add(ROOT, "a", token_ids=[11])
    b = t.add(ROOT, "b", token_ids=[21, 22, 23])
    a1 = t.add(a, "a1", reward=1.0, terminated=True, token_ids=[31, 32])
    a2 = t.add(a, "a2", reward=0.0, terminated=True, token_ids=[41])
    b1 = t.add(b, "b1", token_ids=[51])
    b2 = t.add(b, "b2", token_ids=[61])
    for node, v, times in ((a1, 1.0, 3), (a2, 0.0, 1), (b1, 1.0, 2), (b2, 0.0, 1)):
        for _ in range(times):
            t.backup(node, v)
    for node, prm in zip((a, b, a1, a2, b1, b2), (0.9, 0.4, 1.0, 0.0, 0.8, 0.1)):
        t.scores[node]["prm"] = prm
    return t


def srows(fmt, tree=None, **kw):
    kw.setdefault("template", plain_template)
    ds, stats = export([tree or scored_tree()], fmt, system=None, **raw(fmt, kw))
    return ds.to_list(), stats


def ids(r, *cols):
    return tuple(r[c] for c in cols)


PAIR_IDS = ("prompt_ids", "chosen_ids", "rejected_ids")


def test_pair_id_columns():
    t = scored_tree()
    want = [([1, 2], [11], [21, 22, 23]), ([1, 2, 11], [31, 32], [41]), ([1, 2, 21, 22, 23], [51], [61])]
    for fmt, kw in (("step_pairs", {}), ("step_apo", {"rule": "max_min"}),
                    ("step_pairs", {"layout": "conversational", "template": None})):
        got, _ = srows(fmt, **kw)
        assert len(got) == 3
        assert [ids(r, *PAIR_IDS) for r in got] == want  # the same in every layout: what the policy saw
    got, _ = srows("step_pairs")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in got] == [  # text columns as before
        ("<user>\nQ?\n<assistant>\n", "a\n\n", "b\n\n"), ("<user>\nQ?\n<assistant>\na\n\n", "a1\n\n", "a2\n\n"),
        ("<user>\nQ?\n<assistant>\nb\n\n", "b1\n\n", "b2\n\n")]
    chosen = [1, 3, 5]
    assert all(r["prompt_ids"] + r["chosen_ids"] == t.prompt_ids(c) for r, c in zip(got, chosen))
    # each prefix step's ids: prompt_ids is the root's prompt followed by them (what input: question reads)
    assert [r["prefix_ids"] for r in got] == [[], [[11]], [[21, 22, 23]]]


def test_prefix_ids_carry_the_observation_after_each_step():
    """An agent's step is followed by its observation in what the policy saw; ``prefix_ids`` keep it, so the root's
    prompt and the prefix ids still spell ``prompt_ids``; a tree without ids gives one empty list per step."""
    t = Tree("p", "Q?", "x")
    t.token_ids[ROOT] = [1, 2]
    a = t.add(ROOT, "search[x]", token_ids=[11, 12], obs="found x", obs_ids=[90, 91])
    for text, ids_, v in (("click[x]", [31], 1.0), ("click[y]", [41], 0.0)):
        t.backup(t.add(a, text, token_ids=ids_, terminated=True, reward=v), v)
    t.backup(t.add(ROOT, "search[y]", token_ids=[21], reward=0.0, terminated=True), 0.0)
    got, _ = srows("step_pairs", tree=t, rule="max_min")
    deep = [r for r in got if r["depth"] == 2]
    assert [r["prefix_ids"] for r in deep] == [[[11, 12, 90, 91]]]
    assert deep[0]["prompt_ids"] == [1, 2, 11, 12, 90, 91]
    t.token_ids[a] = []
    got, _ = srows("step_pairs", tree=t, rule="max_min")
    assert [(r["prompt_ids"], r["prefix_ids"]) for r in got if r["depth"] == 2] == [([], [[]])]


def test_step_dpo_id_columns():
    got, _ = srows("step_dpo", template=None)
    assert [ids(r, *PAIR_IDS, "full_chosen_ids", "full_rejected_ids") for r in got] == [
        ([1, 2], [11], [21, 22, 23], [11, 31, 32], [21, 22, 23, 51]),  # continuations: best leaf 3; first leaf 5
        ([1, 2, 11], [31, 32], [41], [31, 32], [41]),
        ([1, 2, 21, 22, 23], [51], [61], [51], [61]),
    ]
    assert [(r["full_chosen"], r["full_rejected"]) for r in got][0] == ("a\n\na1\n\n", "b\n\nb1\n\n")


def test_ranked_lists_stepwise_trajectory_id_columns():
    got, _ = srows("ranked_lists")
    assert [(r["responses"], r["prompt_ids"], r["responses_ids"]) for r in got] == [
        ([["a", "a1"], ["b", "b1"]], [1, 2], [[11, 31, 32], [21, 22, 23, 51]]),
        ([["a1"], ["a2"]], [1, 2, 11], [[31, 32], [41]]),
        ([["b1"], ["b2"]], [1, 2, 21, 22, 23], [[51], [61]]),
    ]
    got, _ = srows("ranked_lists", responses="siblings")
    assert [r["responses_ids"] for r in got] == [[[11], [21, 22, 23]], [[31, 32], [41]], [[51], [61]]]
    got, _ = srows("stepwise", template=None, value="prm")
    assert [(r["completions"], r["prompt_ids"], r["completions_ids"]) for r in got] == [
        (["a", "a1"], [1, 2], [[11], [31, 32]]), (["a", "a2"], [1, 2], [[11], [41]]),
        (["b", "b1"], [1, 2], [[21, 22, 23], [51]]), (["b", "b2"], [1, 2], [[21, 22, 23], [61]])]
    got, _ = srows("trajectory_pairs")
    assert [(r["chosen"], r["rejected"], *ids(r, *PAIR_IDS), r["prefix_ids"]) for r in got] == [
        ("a\n\na1", "a\n\na2", [1, 2], [11, 31, 32], [11, 41], [])]  # a pair at the root: no prefix steps


def test_missing_ids_give_empty_columns_never_partial():
    got, _ = rows("step_pairs")  # the example tree has no ids at all
    assert [ids(r, *PAIR_IDS) for r in got] == [([], [], [])] * 2
    t = scored_tree()
    t.token_ids[4] = []  # one side of the pair under 1 lacks ids
    t.token_ids[2] = []  # a side of the root pair, and the prefix of the pair under 2
    got, _ = srows("step_pairs", t)
    assert [ids(r, *PAIR_IDS) for r in got] == [([], [], [])] * 3
    t = scored_tree()
    t.token_ids[4] = []
    got, _ = srows("step_pairs", t)
    assert [ids(r, *PAIR_IDS) for r in got] == [([1, 2], [11], [21, 22, 23]), ([], [], []),
                                                ([1, 2, 21, 22, 23], [51], [61])]
    got, _ = srows("ranked_lists", t)
    assert [r["responses_ids"] for r in got] == [[[11, 31, 32], [21, 22, 23, 51]], [[], []], [[51], [61]]]
    got, _ = srows("stepwise", t, template=None, value="prm")
    assert [(r["prompt_ids"], r["completions_ids"]) for r in got] == [
        ([1, 2], [[11], [31, 32]]), ([], [[], []]), ([1, 2], [[21, 22, 23], [51]]), ([1, 2], [[21, 22, 23], [61]])]
    t.token_ids[ROOT] = []  # no prompt ids: nothing can be right
    got, _ = srows("step_dpo", t, template=None)
    assert all(not any(r[c] for c in (*PAIR_IDS, "full_chosen_ids", "full_rejected_ids")) for r in got)


def test_id_columns_are_typed_even_when_empty():
    ds, _ = export([example_tree()], "ranked_lists", template=plain_template)
    assert str(ds.features["prompt_ids"]) == "List(Value('int64'))"
    assert str(ds.features["responses_ids"]) == "List(List(Value('int64')))"
    ds, _ = export([example_tree()], "step_pairs", template=plain_template, min_margin=5)  # no rows
    assert len(ds) == 0 and str(ds.features["chosen_ids"]) == "List(Value('int64'))"


def sides(got):
    return [(r["chosen"].strip(), r["rejected"].strip()) for r in got]


def test_prefix_filter():
    every = [("a", "b"), ("a1", "a2"), ("b1", "b2")]
    got, stats = srows("step_pairs")
    assert sides(got) == every and "prefix" not in stats["dropped"] and stats["filters"]["prefix"] is None
    got, stats = srows("step_pairs", prefix="any")
    assert sides(got) == every and stats["dropped"]["prefix"] == 0
    got, stats = srows("step_pairs", prefix="success")  # node 2 is on no successful path
    assert sides(got) == every[:2] and stats["dropped"]["prefix"] == 1
    assert stats["filters"]["prefix"] == "success"
    got, stats = srows("step_pairs", prefix="value")  # path values: [], [0.75], [2/3], all >= 0.5
    assert sides(got) == every and stats["dropped"]["prefix"] == 0
    got, stats = srows("step_pairs", prefix="value", prefix_value=0.7)
    assert sides(got) == every[:2] and stats["dropped"]["prefix"] == 1
    assert stats["filters"]["prefix_value"] == 0.7
    got, stats = srows("step_pairs", prefix="value", prefix_value=0.8)  # only the depth-1 pair (no prefix)
    assert sides(got) == every[:1] and stats["dropped"]["prefix"] == 2
    got, stats = srows("step_pairs", prefix="value", value="prm")  # the export's value: prm(b) = 0.4
    assert sides(got) == every[:2] and stats["dropped"]["prefix"] == 1
    t = scored_tree()
    t.reward[3] = 0.0  # no successful path at all: even the root is on none
    got, stats = srows("step_pairs", t, prefix="success")
    assert got == [] and stats["dropped"]["prefix"] == 3
    for fmt in ("step_apo", "step_dpo"):
        got, stats = srows(fmt, prefix="success", rule="max_min") if fmt == "step_apo" else \
            srows(fmt, prefix="success", template=None)
        assert len(got) == 2 and stats["dropped"]["prefix"] == 1


def test_min_visits_filter():
    got, stats = srows("step_pairs", min_visits=2)  # pair under 2: b2 has 1 visit
    assert sides(got) == [("a", "b"), ("a1", "a2")] and stats["dropped"]["min_visits"] == 1
    got, stats = srows("step_pairs", min_visits=4)  # b has 3 visits; a2 has 1 but is final (exact value)
    assert sides(got) == [("a1", "a2")] and stats["dropped"]["min_visits"] == 2
    assert stats["filters"]["min_visits"] == 4


def test_exact_rejected_filter_keeps_pairs_whose_rejected_step_ended():
    got, _ = srows("step_pairs", min_visits=None)
    assert sides(got) == [("a", "b"), ("a1", "a2"), ("b1", "b2")]
    got, stats = srows("step_pairs", min_visits=None, exact_rejected=True)  # a2 is final; b and b2 are not
    assert sides(got) == [("a1", "a2")] and stats["dropped"]["exact_rejected"] == 2
    got, stats = srows("step_pairs", min_visits=None, exact_rejected=False)
    assert len(got) == 3 and "exact_rejected" not in stats["dropped"]
    with pytest.raises(ValueError, match="exact_rejected must be true, false or 'judged'"):
        srows("step_pairs", exact_rejected="yes")


def test_judged_rejected_keeps_only_rejected_steps_the_environment_judged():
    """Four final steps lose to the right answer: a wrong answer and a false step were judged (kept by
    "judged"); a stop without an answer and a step cut at the depth limit were not (kept only by True)."""
    t = Tree(problem_id="j", prompt="Q?", answer="4")
    right = t.add(ROOT, "The answer is 4.", reward=1.0, terminated=True, info={"answer": "4"})
    wrong = t.add(ROOT, "The answer is 5.", reward=0.0, terminated=True, info={"answer": "5"})
    slip = t.add(ROOT, "2 + 2 = 5", reward=0.0, terminated=True, info={"answer": None, "step_check": False})
    silent = t.add(ROOT, "That is all.", reward=0.0, terminated=True, info={"answer": None})
    cut = t.add(ROOT, "Let me see", truncated=True, info={"answer": None})
    for node, v in ((right, 1.0), (wrong, 0.0), (slip, 0.0), (silent, 0.0), (cut, 0.0)):
        t.backup(node, v)
    kw = dict(tree=t, rule="margin", prefix=None, min_visits=None)
    rejected = lambda rows: sorted(r["rejected"].strip() for r in rows)  # noqa: E731
    got, _ = srows("step_pairs", exact_rejected=True, **kw)
    assert rejected(got) == ["2 + 2 = 5", "Let me see", "That is all.", "The answer is 5."]
    got, stats = srows("step_pairs", exact_rejected="judged", **kw)
    assert rejected(got) == ["2 + 2 = 5", "The answer is 5."] and stats["dropped"]["exact_rejected"] == 2
    assert stats["filters"]["exact_rejected"] == "judged"


def test_checked_steps_keeps_pairs_whose_prefix_and_chosen_step_the_step_check_judged():
    """The d3 trees' failure: below a checked step, a step of prose that went on to the answer beats a false
    step, and pairs under the prose inherit its unknown rightness. ``checked_steps`` drops both, and a
    chosen final answer the step check left unjudged (the environment's lenient reader found 19 in prose
    arithmetic); a chosen answer the check judged stays."""
    t = Tree(problem_id="c", prompt="Q?", answer="19")
    first = t.add(ROOT, "5 - 1 = 4", info={"answer": None, "step_check": True})
    prose = t.add(first, "Now add 15 to it.", info={"answer": None, "step_check": None})
    slip = t.add(first, "4 + 15 = 18", reward=0.0, terminated=True, info={"answer": None, "step_check": False})
    right = t.add(prose, "The answer is 19.", reward=1.0, terminated=True, info={"answer": "19"})
    wrong = t.add(prose, "The answer is 20.", reward=0.0, terminated=True, info={"answer": "20"})
    right2 = t.add(first, "The answer is 19.", reward=1.0, terminated=True,
                   info={"answer": "19", "step_check": True})
    lenient = t.add(first, "That is 3 * 5 + 4, which is 19.", reward=1.0, terminated=True,
                    info={"answer": "19", "step_check": None})
    for node, v in ((right, 1.0), (wrong, 0.0), (slip, 0.0), (right2, 1.0), (lenient, 1.0)):
        t.backup(node, v)
    kw = dict(tree=t, rule="margin", prefix=None, min_visits=None, exact_rejected="judged")
    got, stats = srows("step_pairs", **kw)
    assert sorted(sides(got)) == [("Now add 15 to it.", "4 + 15 = 18"),
                                  ("That is 3 * 5 + 4, which is 19.", "4 + 15 = 18"),
                                  ("The answer is 19.", "4 + 15 = 18"), ("The answer is 19.", "The answer is 20.")]
    assert "checked_steps" not in stats["dropped"]
    got, stats = srows("step_pairs", checked_steps=True, **kw)
    assert sides(got) == [("The answer is 19.", "4 + 15 = 18")] and got[0]["depth"] == 2
    assert stats["dropped"]["checked_steps"] == 3 and stats["filters"]["checked_steps"] is True
    t2 = Tree(problem_id="n", prompt="Q?", answer="4")  # no step check ran: every pair passes
    a = t2.add(ROOT, "Think.", info={"answer": None})
    b = t2.add(a, "The answer is 4.", reward=1.0, terminated=True, info={"answer": "4"})
    c = t2.add(a, "The answer is 5.", reward=0.0, terminated=True, info={"answer": "5"})
    t2.backup(b, 1.0), t2.backup(c, 0.0)
    got, stats = srows("step_pairs", tree=t2, rule="margin", prefix=None, min_visits=None, checked_steps=True)
    assert len(got) == 1 and stats["dropped"]["checked_steps"] == 0
    with pytest.raises(ValueError, match="checked_steps must be true or false"):
        srows("step_pairs", checked_steps="yes")


def test_filters_combine_in_order():
    got, stats = srows("step_pairs", prefix="success", min_visits=2, min_margin=0.5)
    assert sides(got) == [("a1", "a2")]
    assert stats["dropped"] == {"duplicates": 0, "prefix": 1, "min_visits": 0, "min_margin": 1}
    assert stats["filters"] == {"prefix": "success", "prefix_value": 0.5, "min_visits": 2,
                                "exact_rejected": None, "checked_steps": None, "min_margin": 0.5, "min_edit": None,
                                "max_per_node": None, "max_per_problem": None}
    assert stats["rows"] == 1


def test_filter_errors():
    with pytest.raises(ValueError, match="unknown prefix"):
        srows("step_pairs", prefix="good")
    with pytest.raises(ValueError, match="prefix_value"):
        srows("step_pairs", prefix_value=0.7)
    with pytest.raises(ValueError, match="unknown option 'prefix'"):
        srows("ranked_lists", prefix="success")
    with pytest.raises(ValueError, match="unknown option 'min_visits'"):
        srows("trajectory_pairs", min_visits=1)


def test_ids_keep_the_step_boundary(model_dir):
    """SmolLM2 writes "\\n\\n" after a step as 198, 198, but encodes a text ending in "\\n\\n" as 1116: the ids
    of a row are the former, a re-tokenised prompt the latter."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    template = template_from_tokenizer(model_dir)
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    t = Tree(problem_id="b", prompt=Q, answer="14")
    t.token_ids[ROOT] = enc(template([{"role": "user", "content": Q}]))
    s1 = t.add(ROOT, S1, token_ids=enc(S1) + [198, 198])
    t.add(ROOT, S2, token_ids=enc(S2) + [198, 198])
    t.add(s1, S3, token_ids=enc(S3) + [198, 198], terminated=True, reward=1.0)
    t.add(s1, S4, token_ids=enc(S4) + [198, 198], terminated=True, reward=0.0)
    for node, v in ((1, 1.0), (2, 0.0), (3, 1.0), (4, 0.0)):
        t.backup(node, v)
    ds, _ = export([t], "step_pairs", template=template, system=None, **RAW)
    deep = ds.to_list()[1]
    assert deep["prompt"].endswith(S1 + "\n\n") and deep["prompt_ids"][-2:] == [198, 198]
    assert enc(deep["prompt"])[-1] == 1116  # what tokenising the prompt text gives at the boundary
    for side in ("chosen", "rejected"):
        assert tok.decode(deep["prompt_ids"] + deep[f"{side}_ids"]) == deep["prompt"] + deep[side]
