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
from treepref.tree import ROLLOUT, ROOT, STEP, Tree

TEXTS = ["a", "b", "c", "a b", "x = 1.", "The answer is 1.", "The answer is 2."]
IDS = st.lists(st.integers(0, 50), min_size=1, max_size=3)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The pair filters are on by default; the properties of rules and formats are checked with them off.
RAW = {"prefix": None, "min_visits": None}


@st.composite
def trees(draw) -> Tree:
    t = Tree(problem_id=f"p{draw(st.integers(0, 2))}", prompt=draw(st.sampled_from(["Q?", "What is 1?"])),
             answer="1")
    # token ids on every node, on none (an older run), or on some (never exported: a row is all or nothing)
    ids = draw(st.sampled_from(["all", "none", "some"]))
    has_ids = (lambda: True) if ids == "all" else (lambda: False) if ids == "none" else (lambda: draw(st.booleans()))
    if has_ids():
        t.token_ids[0] = draw(IDS)
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.integers(0, len(t) - 1))
        if t.terminated[parent]:
            continue
        done = draw(st.booleans())
        node = t.add(parent, draw(st.sampled_from(TEXTS)), n_tokens=draw(st.integers(0, 9)),
                     terminated=done, reward=draw(st.sampled_from([0.0, 1.0, -1.0])) if done else None,
                     kind=ROLLOUT if t.kind[parent] == ROLLOUT or draw(st.integers(0, 5)) == 0 else STEP,
                     token_ids=draw(IDS) if has_ids() else ())
        for _ in range(draw(st.integers(0, 3))):
            t.backup(node, draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0])))
        total = draw(st.integers(0, 4))
        t.mc_total[node], t.mc_correct[node] = total, draw(st.integers(0, total))
        if draw(st.booleans()):
            t.scores[node]["prm"] = draw(st.floats(0, 1))
    return t


def _node_of(tree: Tree, prefix: list[str]) -> list[int]:
    return [n for n in range(len(tree)) if tree.steps(n) == prefix]


def _steps_of(joined: str) -> list[str]:
    return joined.split("\n\n")[:-1]


def _ids_match(r, t: Tree, n: int, sides=("chosen", "rejected")) -> bool:
    """``prompt_ids + <side>_ids == t.prompt_ids(<side>)`` for a child of ``n`` with each side's text and ids
    on every node down to it; or every id column empty, where some node the row needs lacks ids (a row
    holds all its ids or none, never partial ones)."""
    def known(c: int) -> bool:
        return all(t.token_ids[m] for m in (ROOT, *t.path(c)))

    options = {side: [c for c in t.children(n) if t.text[c] + "\n\n" == r[side]] for side in sides}
    if all(any(r["prompt_ids"] + r[f"{side}_ids"] == t.prompt_ids(c) and known(c) for c in options[side])
           for side in sides):
        return True
    empty = not any(r[f"{c}_ids"] for c in ("prompt", *sides))
    return empty and any(not known(c) for side in sides for c in options[side])


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
    ds, stats = export(ts, "step_pairs", template=plain_template, rule=rule, value=value, **opts, **RAW)
    by_id = {t.problem_id: t for t in ts}  # later trees of the same id win: check against any
    assert _unique(ds)
    keys = [(r["problem_id"], tuple(r["prefix_steps"]), frozenset((r["chosen"], r["rejected"]))) for r in ds]
    assert len(keys) == len(set(keys))
    for r in ds:
        candidates = [t for t in ts if t.problem_id == r["problem_id"]] or [by_id[r["problem_id"]]]
        ok = False
        for t in candidates:
            problem = problem_of(t)
            rendered = ENV.render_text(State(problem, tuple(r["prefix_steps"])))
            for n in _node_of(t, r["prefix_steps"]):
                kids = {t.text[c] + "\n\n" for c in t.children(n, kind=STEP)}
                if r["prompt"] == rendered and {r["chosen"], r["rejected"]} <= kids and _ids_match(r, t, n):
                    ok = True
                    assert r["prompt"] + r["chosen"] == ENV.render_text(
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
    ds, _ = export([t], "step_apo", template=plain_template, rule="on_off_path", **RAW)
    for r in ds:
        parents = [n for n in _node_of(t, r["prefix_steps"]) if n in ok]  # same-text siblings: any of them
        assert parents
        on = {t.text[c] + "\n\n" for n in parents for c in t.children(n) if c in ok}
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
        assert len(r["responses_ids"]) == len(r["responses"])


@FAST
@given(st.lists(trees(), min_size=1, max_size=3))
def test_trajectory_and_other_formats(ts):
    ds, _ = export(ts, "trajectory_pairs", template=plain_template)
    assert _unique(ds)
    for r in ds:
        assert r["chosen_reward"] >= 1.0 > r["rejected_reward"] and r["chosen"] != r["rejected"]
    ds, _ = export(ts, "step_dpo", **RAW)
    for r in ds:
        assert r["full_chosen"].startswith(r["chosen"]) and r["full_rejected"].startswith(r["rejected"])
        assert r["full_chosen_ids"][:len(r["chosen_ids"])] == r["chosen_ids"]
        assert r["full_rejected_ids"][:len(r["rejected_ids"])] == r["rejected_ids"]
        # ids of the continuations count too: a row with a continuation lacking ids has none
        no_ids = not any(r[c] for c in ("prompt_ids", "chosen_ids", "rejected_ids", "full_chosen_ids",
                                          "full_rejected_ids"))
        assert any(_ids_match(r, t, n) or (no_ids and not all(t.token_ids))
                   for t in ts if t.problem_id == r["problem_id"]
                   for n in _node_of(t, _steps_of(r["initial_reason_steps"])))
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
        assert len(r["labels"]) == len(r["completions"]) == len(r["soft_labels"]) == len(r["completions_ids"]) > 0


@FAST
@given(st.lists(trees(), min_size=1, max_size=3), st.sampled_from(["step_pairs", "step_apo", "step_dpo"]),
       st.sampled_from(["success", "value"]), st.sampled_from([None, 1, 2]))
def test_pair_filters_keep_what_they_say(ts, fmt, prefix, min_visits):
    ds, stats = export(ts, fmt, template=plain_template, rule="margin", prefix=prefix, min_visits=min_visits)
    every, _ = export(ts, fmt, template=plain_template, rule="margin", **RAW)
    dropped = stats["dropped"]
    assert len(every) - len(ds) == dropped["prefix"] + dropped.get("min_visits", 0)
    assert stats["filters"]["prefix"] == prefix and stats["filters"]["min_visits"] == min_visits

    def passes(t: Tree, n: int, c: int, x: int) -> bool:
        if prefix == "success" and n not in success_nodes(t):
            return False
        if prefix == "value" and not all(t.value(m) is not None and t.value(m) >= 0.5 for m in t.path(n)):
            return False
        return not min_visits or all(t.visits[s] >= min_visits or t.is_final(s) for s in (c, x))

    for r in ds:
        prefix_steps = r["prefix_steps"] if fmt != "step_dpo" else _steps_of(r["initial_reason_steps"])
        assert any(passes(t, n, c, x)
                   for t in ts if t.problem_id == r["problem_id"] for n in _node_of(t, prefix_steps)
                   for c in t.children(n) if t.text[c] + "\n\n" == r["chosen"]
                   for x in t.children(n) if t.text[x] + "\n\n" == r["rejected"]), r
