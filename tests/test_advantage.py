"""Progress as a value (PAV): the ``advantage`` evaluator's A = V(after) − V(before) under a prover policy,
hand-computed on scripted policies whose completions from each prefix are known, and the exports that read it."""

from __future__ import annotations

import pytest

from test_search_common import make_ctx, node_by_steps, run
from treepref.backends import BACKENDS
from treepref.backends.scripted import ScriptedPolicy
from treepref.config import ConfigError, config_from_dict
from treepref.extract import export
from treepref.problems import Problem
from treepref.search import build_config, prover as prover_module
from treepref.search.beam import beam
from treepref.search.mcts import mcts
from treepref.tokens import PLAIN
from treepref.tree import ROOT

PROBLEM = Problem("p", "What is 2 + 3?", answer="5")
RIGHT, SLIP = "2 + 3 = 5", "2 + 3 = 6"
# The search policy offers a right first step and a slip, then the answer each leads to.
POLICY = {(): [RIGHT, SLIP], (RIGHT,): ["The answer is 5."], (SLIP,): ["The answer is 6."]}
# The prover's 4 completions from the prompt: 3 take the right step (and answer 5), one the slip (answer 6); from
# after either step it answers what that step leads to. So V(prompt) = 3/4, V(right) = 4/4, V(slip) = 0/4.
PROVER = {(): [RIGHT, RIGHT, RIGHT, SLIP], (RIGHT,): ["The answer is 5."], (SLIP,): ["The answer is 6."]}


class OtherTokens(ScriptedPolicy):
    """The prover's script behind another vocabulary: its ids are not the tree's, so it must be sent text."""

    def encode(self, text):
        return [i + 10_000 for i in PLAIN.encode(text)]

    def decode(self, token_ids):
        return PLAIN.decode([i - 10_000 for i in token_ids])


@pytest.fixture
def prover(monkeypatch):
    """``prover(policy)`` registers ``policy`` as the backend ``scripted-prover`` for one test; returns its spec."""
    monkeypatch.setattr(prover_module, "_PROVERS", {})  # a prover is built once per process: not across tests

    def add(policy):
        BACKENDS.register("scripted-prover", lambda model=None, **options: policy)
        return {"backend": "scripted-prover"}

    yield add
    BACKENDS.entries.pop("scripted-prover", None)


def beam_tree(evaluator, policy=None, max_depth=1):
    ctx = make_ctx(POLICY)
    if policy is not None:
        ctx.policy = policy
    cfg = build_config("beam", {"beam_width": 2, "k": 2, "max_depth": max_depth, "evaluator": evaluator})
    return run(beam(PROBLEM, ctx, cfg)), ctx


def rollout_prompts(policy):
    """The prompts of a scripted policy's Monte Carlo requests (no stop string), as tuples of ids or text."""
    return [p if isinstance(p, str) else tuple(p) for prompts, params in policy.calls if not params.stop
            for p in prompts]


def test_advantages_are_hand_computed(prover):
    tree, _ = beam_tree({"kind": "advantage", "prover": prover(ScriptedPolicy(PROVER))})
    right, slip = node_by_steps(tree, [RIGHT]), node_by_steps(tree, [SLIP])
    assert tree.scores[ROOT]["prover_value"] == 0.75 and tree.info[ROOT]["prover"] == {"correct": 3, "total": 4}
    assert (tree.scores[right]["prover_value"], tree.scores[right]["advantage"]) == (1.0, 0.25)
    assert (tree.scores[slip]["prover_value"], tree.scores[slip]["advantage"]) == (0.0, -0.75)
    assert tree.info[slip]["prover"] == {"correct": 0, "total": 4}
    # backed up (the default): the prover's value + 0.5 * A, as the beam ranked them
    assert tree.scores[right]["beam"] == 1.0 + 0.5 * 0.25 and tree.scores[slip]["beam"] == 0.0 - 0.5 * 0.75
    assert tree.value(right) == 1.125


def test_the_prover_continues_the_trees_exact_ids(prover):
    scripted = ScriptedPolicy(PROVER)
    tree, _ = beam_tree({"kind": "advantage", "prover": prover(scripted)})
    valued = [ROOT, node_by_steps(tree, [RIGHT]), node_by_steps(tree, [SLIP])]
    assert sorted(rollout_prompts(scripted)) == sorted(tuple(tree.prompt_ids(n)) for n in valued)
    assert all("text" not in tree.info[n]["prover"] for n in valued)
    # its completions are evidence, not steps: the tree holds only the policy's steps
    assert len(tree) == 3 and tree.meta["prover_requests"] == 3


def test_a_prover_with_another_tokenizer_continues_the_decoded_text(prover):
    other = OtherTokens(PROVER)
    tree, _ = beam_tree({"kind": "advantage", "prover": prover(other)})
    right, slip = node_by_steps(tree, [RIGHT]), node_by_steps(tree, [SLIP])
    assert sorted(rollout_prompts(other)) == sorted(tree.prompt_text(n) for n in (ROOT, right, slip))
    assert sorted(rollout_prompts(other)) == sorted(PLAIN.decode(tree.prompt_ids(n)) for n in (ROOT, right, slip))
    assert tree.info[right]["prover"] == {"correct": 4, "total": 4, "text": True}
    assert (tree.scores[right]["advantage"], tree.scores[slip]["advantage"]) == (0.25, -0.75)


def test_the_parents_value_is_estimated_once(prover):
    scripted = ScriptedPolicy(PROVER)
    tree, _ = beam_tree({"kind": "advantage", "prover": prover(scripted)}, max_depth=2)
    # the prompt's V once for both children (valued at the same time), then once each for the two steps
    prompts = rollout_prompts(scripted)
    assert len(prompts) == 3 and prompts.count(tuple(tree.prompt_ids(ROOT))) == 1


def test_the_search_policy_as_prover_in_mcts():
    """prover: null. The scripted policy's 4 completions from the prompt alternate its two first steps, so
    V(prompt) = 2/4; V(right) = 1, V(slip) = 0. MCTS values the root first, and each node's V once."""
    ctx = make_ctx(POLICY)
    cfg = build_config("mcts", {"simulations": 3, "k": 2, "c_puct": 10.0,
                                "evaluator": {"kind": "advantage", "prover": None, "temperature": 0.7}})
    tree = run(mcts(PROBLEM, ctx, cfg))
    right, slip = node_by_steps(tree, [RIGHT]), node_by_steps(tree, [SLIP])
    assert tree.scores[ROOT]["prover_value"] == 0.5 and tree.scores[ROOT]["advantage"] is None
    assert (tree.scores[right]["advantage"], tree.scores[slip]["advantage"]) == (0.5, -0.5)
    rollouts = [params for _, params in ctx.policy.calls if not params.stop]
    assert len(rollouts) == 3 and all(p.temperature == 0.7 and p.n == 4 for p in rollouts)
    # the policy's own tokens: the search's budget pays for them
    assert tree.meta["prover_tokens"] > 0 and tree.meta["generated_tokens"] > tree.meta["prover_tokens"]
    # backed up: the root's value (no advantage), then V + 0.5 * A for each step
    assert tree.value(ROOT) == pytest.approx((0.5 + (1.0 + 0.25) + (0.0 - 0.25)) / 3)


def test_backing_up_the_advantage_or_q_plus_alpha_a(prover):
    spec = prover(ScriptedPolicy(PROVER))
    tree, _ = beam_tree({"kind": "advantage", "prover": spec, "backup": "advantage"})
    assert [tree.scores[n]["beam"] for n in (1, 2)] == [0.25, -0.75]
    # a mix whose rollouts (weight 0) give the search policy's Q first: Q + alpha * A is backed up
    mix = {"kind": "mix", "parts": [{"kind": "rollouts", "n": 2, "weight": 0},
                                    {"kind": "advantage", "prover": spec, "alpha": 1.0}]}
    tree, _ = beam_tree(mix)
    right, slip = node_by_steps(tree, [RIGHT]), node_by_steps(tree, [SLIP])
    assert (tree.mc_value(right), tree.mc_value(slip)) == (1.0, 0.0)
    assert (tree.scores[right]["mix"], tree.scores[slip]["mix"]) == (1.0 + 0.25, 0.0 - 0.75)
    assert tree.scores[right]["advantage"] == 0.25  # the mix does not overwrite what the kind recorded


def test_stepwise_rows_carry_advantages_and_the_values_behind_them(prover):
    tree, _ = beam_tree({"kind": "advantage", "prover": prover(ScriptedPolicy(PROVER))}, max_depth=2)
    rows, _ = export([tree], "stepwise", value="advantage")
    by_first = {r["completions"][0]: r for r in rows}
    right, slip = by_first[RIGHT], by_first[SLIP]
    assert right["completions"] == [RIGHT, "The answer is 5."] and right["label_source"] == "advantage"
    # the final step is valued by its outcome: A = 1 - V(right) = 0, and 0 - V(slip) = 0
    assert right["advantages"] == [0.25, 0.0] and slip["advantages"] == [-0.75, 0.0]
    assert right["prover_values"] == [0.75, 1.0, 1.0] and slip["prover_values"] == [0.75, 0.0, 0.0]
    assert right["prover_correct"] == [3, 4, None] and right["prover_total"] == [4, 4, None]
    assert right["soft_labels"] == [0.625, 0.5] and right["labels"] == [True, True]  # (1 + A) / 2 >= 0.5
    assert slip["soft_labels"] == [0.125, 0.5] and slip["labels"] == [False, True]
    strict, _ = export([tree], "stepwise", value="advantage", threshold=0.6)  # progress only: A >= 0.2
    assert sorted(r["labels"] for r in strict) == [[False, False], [True, False]]


def test_a_pair_rule_ranks_siblings_by_advantage(prover):
    tree, _ = beam_tree({"kind": "advantage", "prover": prover(ScriptedPolicy(PROVER))}, max_depth=2)
    pairs, _ = export([tree], "step_pairs", value="advantage", rule="max_min", prefix=None, min_visits=None)
    assert len(pairs) == 1
    pair = pairs[0]
    assert (pair["chosen"].strip(), pair["rejected"].strip()) == (RIGHT, SLIP)
    assert (pair["chosen_value"], pair["rejected_value"], pair["margin"]) == (0.25, -0.75, 1.0)


@pytest.mark.parametrize("options, message", [
    ({"rollouts": 0}, "evaluator.rollouts must be an integer >= 1, got 0"),
    ({"temperature": -1}, "evaluator.temperature must be a number >= 0, got -1"),
    ({"max_tokens": 1.5}, "evaluator.max_tokens must be an integer >= 1, got 1.5"),
    ({"alpha": "big"}, "evaluator.alpha must be a number, got 'big'"),
    ({"backup": "q"}, "evaluator.backup must be one of value, advantage, got 'q'"),
    ({"provers": None}, "unknown option 'provers' for kind 'advantage'"),
    ({"prover": "smollm"}, "evaluator.prover must be a model section"),
    ({"prover": {"backend": "hf", "model": "x"}}, "evaluator.prover: unknown key 'model'"),
    ({"prover": {"backend": "nope"}}, "evaluator.prover.backend: unknown backend 'nope'"),
    ({"prover": {"options": "fast"}}, "evaluator.prover.options: expected dict"),
])
def test_bad_options_are_one_line_config_errors(options, message):
    recipe = {"search": {"name": "beam", "options": {"evaluator": {"kind": "advantage", **options}}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(recipe, "pav.yaml")
    text = str(err.value)
    assert text.startswith("pav.yaml: ") and message in text and "\n" not in text


def test_a_prover_section_is_completed_like_the_model_section():
    cfg = config_from_dict({"search": {"name": "mcts", "options": {"evaluator": {
        "kind": "advantage", "prover": {"name": "some/model"}}}}}, "pav.yaml")
    spec = build_config(cfg.search.name, cfg.search.options).evaluator
    assert spec["prover"] == {"name": "some/model", "backend": "hf", "options": {}}
    assert (spec["rollouts"], spec["alpha"], spec["backup"]) == (4, 0.5, "value")


def test_the_pav_recipe_runs_on_the_tutor(tmp_path):
    """configs/pav.yaml end to end with the scripted tutor in place of the model: trees valued by the advantage
    evaluator (the policy as prover) and exports that read it."""
    import json

    import treepref
    import tutor

    remove = tutor.register()
    try:
        (tmp_path / "model").mkdir()
        run = treepref.generate("configs/pav.yaml", tmp_path / "run", overrides={
            "model.backend": tutor.NAME, "model.name": str(tmp_path / "model"), "problems.options.count": 2})
    finally:
        remove()
    trees = list(run.trees())
    assert len(trees) == 2 and all(any(s.get("advantage") is not None for s in t.scores) for t in trees)
    rows = [json.loads(line) for line in (run.folder / "exports" / "stepwise" / "rows.jsonl").read_text().splitlines()]
    assert rows and all(len(r["advantages"]) == len(r["completions"]) for r in rows)
    assert all(r["label_source"] == "advantage" for r in rows)
    pairs = (run.folder / "exports" / "step_pairs" / "rows.jsonl").read_text().splitlines()
    assert pairs and all(json.loads(p)["chosen_value"] > json.loads(p)["rejected_value"] for p in pairs)
