"""Property tests of the exports on random trees (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treepref.envs.base import State
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.extract import export
from treepref.extract.common import problem_of, success_nodes
from treepref.extract.rules import VALUE_ORDERED
from treepref.tree import ROLLOUT, STEP, Tree

TEXTS = ["a", "b", "c", "a b", "x = 1.", "The answer is 1.", "The answer is 2."]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def trees(draw) -> Tree:
    t = Tree(problem_id=f"p{draw(st.integers(0, 2))}", prompt=draw(st.sampled_from(["Q?", "What is 1?"])),
             answer="1")
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.integers(0, len(t) - 1))
        if t.terminated[parent]:
            continue
        done = draw(st.booleans())
        node = t.add(parent, draw(st.sampled_from(TEXTS)), n_tokens=draw(st.integers(0, 9)),
                     terminated=done, reward=draw(st.sampled_from([0.0, 1.0, -1.0])) if done else None,
                     kind=ROLLOUT if t.kind[parent] == ROLLOUT or draw(st.integers(0, 5)) == 0 else STEP)
        for _ in range(draw(st.integers(0, 3))):
            t.backup(node, draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0])))
        total = draw(st.integers(0, 4))
        t.mc_total[node], t.mc_correct[node] = total, draw(st.integers(0, total))
        if draw(st.booleans()):
            t.scores[node]["prm"] = draw(st.floats(0, 1))
    return t


def _node_of(tree: Tree, prefix: list[str]) -> list[int]:
    return [n for n in range(len(tree)) if tree.steps(n) == prefix]


def _unique(ds) -> bool:
    dumped = [json.dumps(r, sort_keys=True) for r in ds]
    return len(dumped) == len(set(dumped))


ENV = ReasoningEnv(template=plain_template)


@FAST
@given(st.lists(trees(), min_size=1, max_size=3), st.sampled_from(sorted(VALUE_ORDERED) + ["on_off_path"]),
       st.sampled_from(["value", "mc", "reward", "prm"]))
def test_pairs_continue_their_prompt(ts, rule, value):
    if value == "prm" and not any("prm" in s for t in ts for s in t.scores):
        value = "value"
    opts = {"margin_edit": {"margin": 0.1, "edit": 1}, "q_sign": {"threshold": 0.25}}.get(rule, {})
    ds, stats = export(ts, "step_pairs", template=plain_template, rule=rule, value=value, **opts)
    by_id = {t.problem_id: t for t in ts}  # later trees of the same id win: check against any
    assert _unique(ds)
    keys = [(r["problem_id"], tuple(r["prefix_steps"]), frozenset((r["chosen"], r["rejected"]))) for r in ds]
    assert len(keys) == len(set(keys))
    for r in ds:
        candidates = [t for t in ts if t.problem_id == r["problem_id"]] or [by_id[r["problem_id"]]]
        ok = False
        for t in candidates:
            problem = problem_of(t)
            rendered = ENV.render(State(problem, tuple(r["prefix_steps"])))
            for n in _node_of(t, r["prefix_steps"]):
                kids = {t.text[c] + "\n\n" for c in t.children(n, kind=STEP)}
                if r["prompt"] == rendered and {r["chosen"], r["rejected"]} <= kids:
                    ok = True
                    assert r["prompt"] + r["chosen"] == ENV.render(
                        State(problem, tuple(r["prefix_steps"]) + (r["chosen"][:-2],)))
        assert ok, r
        assert r["chosen"] != r["rejected"]
        if rule in VALUE_ORDERED:
            assert r["chosen_value"] > r["rejected_value"] and r["margin"] > 0
    assert stats["rows"] == len(ds)
    assert sum(stats["rows_per_problem"].values()) == len(ds)


@FAST
@given(trees())
def test_on_off_path_chooses_the_successful_step(t):
    ok = success_nodes(t)
    ds, _ = export([t], "step_apo", template=plain_template, rule="on_off_path")
    for r in ds:
        [n] = [n for n in _node_of(t, r["prefix_steps"]) if n in ok][:1] or [None]
        assert n is not None
        on = {t.text[c] + "\n\n" for c in t.children(n) if c in ok}
        assert r["chosen"] in on


@FAST
@given(st.lists(trees(), min_size=1, max_size=3), st.sampled_from(["paths", "siblings"]),
       st.sampled_from(["value", "mc", "prm"]))
def test_ranked_lists_are_sorted(ts, responses, value):
    if value == "prm" and not any("prm" in s for t in ts for s in t.scores):
        value = "mc"
    ds, _ = export(ts, "ranked_lists", template=plain_template, value=value, responses=responses)
    assert _unique(ds)
    for r in ds:
        assert r["scores"] == sorted(r["scores"], reverse=True) and len(r["scores"]) >= 2
        assert len(r["responses"]) == len(r["scores"]) == len(r["step_rewards"])
        assert [len(x) for x in r["responses"]] == [len(x) for x in r["step_rewards"]]
        assert [x[0] for x in r["step_rewards"]] == r["scores"]


@FAST
@given(st.lists(trees(), min_size=1, max_size=3))
def test_trajectory_and_other_formats(ts):
    ds, _ = export(ts, "trajectory_pairs", template=plain_template)
    assert _unique(ds)
    for r in ds:
        assert r["chosen_reward"] >= 1.0 > r["rejected_reward"] and r["chosen"] != r["rejected"]
    ds, _ = export(ts, "step_dpo")
    for r in ds:
        assert r["full_chosen"].startswith(r["chosen"]) and r["full_rejected"].startswith(r["rejected"])
    ds, _ = export(ts, "trees")
    distinct = {json.dumps(t.to_dict(), sort_keys=True): len(t) for t in ts}
    assert [len(r["nodes"]) for r in ds] == list(distinct.values())


@FAST
@given(st.lists(trees(), min_size=1, max_size=3), st.sampled_from(["mc", "prm"]))
def test_stepwise_labels_line_up(ts, source):
    if source == "prm" and not any("prm" in s for t in ts for s in t.scores):
        source = "mc"
    ds, _ = export(ts, "stepwise", value=source)
    assert _unique(ds)
    for r in ds:
        assert len(r["labels"]) == len(r["completions"]) == len(r["soft_labels"]) > 0
