"""A process advantage verifier (PAV), the second half of the loop of configs/pav.yaml: ``method: pav`` fits a
token head to the stepwise export's advantages, ``verifiers.trained.TrainedPAV`` reads it back, and the ``pav``
evaluator values a search's nodes by it. Everything runs on ``tutor.save_byte_model`` (a byte-level tokenizer
and a 2-layer Llama, no embedded model) and the tutor writing in that tokenizer, so none of it is slow."""

from __future__ import annotations

import json

import pytest

import tutor
from treepref.config import ConfigError
from treepref.errors import UserInputError
from treepref.train.data import Builder, TrainDataError, load_rows

P, RIGHT, SLIP, ANSWER = [5, 6, 7], [8, 9], [10, 11], [12]  # token ids of a prompt, two first steps, an answer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    return tutor.save_byte_model(tmp_path_factory.mktemp("byte"))


@pytest.fixture(scope="module")
def model_tutor():
    remove = tutor.register("model-tutor", tutor.ModelTutor)
    yield {"model.backend": "model-tutor"}
    remove()


# -- the data -------------------------------------------------------------------------------------------
def test_rows_give_a_target_at_each_steps_last_token_and_skip_steps_without_one():
    rows = [{"prompt_ids": P, "completions_ids": [RIGHT, ANSWER], "advantages": [0.25, None]},
            {"prompt_ids": P, "completions_ids": [SLIP], "advantages": [None]},
            {"prompt_ids": P, "completions_ids": [SLIP, ANSWER], "advantages": [-0.75, 0]}]
    builder = Builder("pav", "rows.jsonl", eos_id=0)
    first, third = builder.build(rows)
    assert (first.ids, first.positions, first.labels) == (P + RIGHT, [4], [0.25])  # ids end at the last target
    assert (third.ids, third.positions, third.labels) == (P + SLIP + ANSWER, [4, 5], [-0.75, 0.0])
    assert (builder.skipped_steps, builder.unlabelled) == (2, 1)


@pytest.mark.parametrize("row, message", [
    ({"advantages": [1.5, 0.0]}, "rows.jsonl: row 1: advantages: step 1: must be a number in [-1, 1] or null, got 1.5"),
    ({"advantages": [0.0, "up"]}, "rows.jsonl: row 1: advantages: step 2: must be a number in [-1, 1] or null, "
                                  "got 'up'"),
    ({"advantages": [0.5]}, "rows.jsonl: row 1: advantages: must hold one value per step (2), got 1"),
    ({"advantages": None}, "rows.jsonl: row 1: advantages: missing (method pav reads it)"),
    ({"completions_ids": [RIGHT, []]}, "rows.jsonl: row 1: completions_ids: must be one non-empty list of token ids "
                                       "per step (a tree without token ids: regenerate the run)"),
])
def test_a_bad_row_is_one_line_naming_file_row_and_field(row, message):
    good = {"prompt_ids": P, "completions_ids": [RIGHT, ANSWER], "advantages": [0.25, 0.0]}
    with pytest.raises(TrainDataError) as err:
        Builder("pav", "rows.jsonl", eos_id=0).build([{**good, **row}])
    assert str(err.value) == message


def test_data_without_advantages_is_refused_before_a_model_loads(tmp_path):
    path = write_jsonl(tmp_path / "steps.jsonl", [{"prompt_ids": P, "completions_ids": [RIGHT], "labels": [True]}])
    with pytest.raises(TrainDataError) as err:
        load_rows(path, "pav")
    assert str(err.value) == (f"{path}: no column 'advantages'; method pav reads the stepwise export "
                              "(`treepref extract RUN -f stepwise --value advantage`)")
    with pytest.raises(UserInputError) as err:  # as treepref train says it, without loading the (missing) model
        import treepref

        treepref.train({"method": "pav", "data": str(path), "model": str(tmp_path / "none")}, tmp_path / "out")
    assert str(err.value).startswith(f"{path}: no column 'advantages'") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="format 'step_pairs' has no pav columns; use one of stepwise"):
        from treepref.train.config import train_config_from_dict

        train_config_from_dict({"method": "pav", "format": "step_pairs"}, "train-pav.yaml")


def test_every_row_without_an_advantage_leaves_no_example(tmp_path):
    from treepref.train.data import examples

    path = write_jsonl(tmp_path / "steps.jsonl", [{"prompt_ids": P, "completions_ids": [RIGHT], "advantages": [None]}])
    with pytest.raises(TrainDataError, match=r"no example left \(0 rows longer than max_length=None, 1 with no step "
                                             r"labelled\)"):
        examples(path, "pav", eos_id=0)


# -- training -------------------------------------------------------------------------------------------
def train(data, model, out, **train):
    import treepref

    opts = {"max_steps": 24, "batch_size": 2, "learning_rate": 2e-2, "logging_steps": 1, "save_steps": 100,
            "progress": False, **train}
    return treepref.train({"method": "pav", "data": str(data), "model": model, "train": opts}, out)


def test_a_tiny_pav_moves_its_predictions_toward_the_advantages(byte_model, tmp_path):
    """Two first steps, one that made progress (A = 0.5) and a slip that lost ground (A = -0.75), and a step
    with no advantage (left out): training lowers the loss (its first value is the untrained head's on both
    rows, one batch) and the PAV read back predicts the two in order, near their advantages."""
    from treepref.verifiers.trained import load_trained

    enc = tutor.FolderTokenizer(byte_model)
    prompt = enc.encode("<user>\nWhat is 2 + 3?\n<assistant>\n")
    right, slip, end = (enc.encode(t) for t in ("2 + 3 = 5\n\n", "2 + 3 = 6\n\n", "The answer is 5."))
    rows = [{"prompt_ids": prompt, "completions_ids": [right, end], "advantages": [0.5, None]},
            {"prompt_ids": prompt, "completions_ids": [slip], "advantages": [-0.75]}]
    s = train(write_jsonl(tmp_path / "steps.jsonl", rows), byte_model, tmp_path / "out")
    assert (s["method"], s["examples"], s["skipped_steps"], s["steps"]) == ("pav", 2, 1, 24)
    assert json.loads((tmp_path / "out" / "model" / "treepref-train.json").read_text())["method"] == "pav"

    pav = load_trained(s["model"])
    [[a]], [[b]] = pav.score_many([(prompt, [right])]), pav.score_many([(prompt, [slip])])
    assert a > b and abs(a - 0.5) < 0.25 and abs(b + 0.75) < 0.25, (a, b)
    logged = [r for r in s["log"] if "loss" in r]
    assert logged[-1]["loss"] < logged[0]["loss"] / 4 and {"mae", "sign_accuracy", "mean_pred"} <= set(logged[-1])


# -- reading it back ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pav_dir(byte_model, tmp_path_factory):
    """A random PAV saved as ``treepref train`` saves one (a 1-output token head, the summary's method)."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("pav") / "model"
    torch.manual_seed(3)
    cfg = AutoConfig.from_pretrained(byte_model, num_labels=1, initializer_range=0.5)
    AutoModelForTokenClassification.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(byte_model).save_pretrained(folder)
    (folder / "treepref-train.json").write_text(json.dumps({"method": "pav"}))
    return folder


def test_a_pav_reads_tanh_of_its_head_at_each_steps_last_token(pav_dir):
    import torch

    from treepref.verifiers.trained import TrainedPAV, load_trained

    pav = load_trained(pav_dir.parent)  # the run's output folder: the model is found under it
    assert type(pav) is TrainedPAV
    got = pav.score_ids(P, [RIGHT, ANSWER])
    with torch.inference_mode():
        head = pav.model(input_ids=torch.tensor([P + RIGHT + ANSWER])).logits[0, :, 0]
    assert got == pytest.approx([torch.tanh(head[4]).item(), torch.tanh(head[5]).item()], abs=1e-6)
    assert abs(got[0] - torch.tanh(head[3]).item()) > 1e-4  # the check can tell positions apart
    assert all(-1 <= a <= 1 for a in got)


def test_a_pav_folder_is_no_prm(pav_dir):
    from treepref.search.evaluators import parse

    with pytest.raises(ValueError, match=f"evaluator.model: {pav_dir} holds a trained pav, not a prm"):
        parse({"kind": "prm", "model": str(pav_dir)})
    spec = parse({"kind": "pav", "model": str(pav_dir)})
    assert (spec["aggregate"], spec["default"]) == ("sum", 0.5)


# -- searching against it -------------------------------------------------------------------------------
def guided(folder, byte_model, model_tutor, out, **overrides):
    """configs/pav-guided-beam.yaml on the tutor's problems (seed 0), slips left open (no step check) so that two
    valued siblings compete, one beam kept."""
    import treepref

    return treepref.generate("configs/pav-guided-beam.yaml", out, overrides={
        **model_tutor, "model.name": byte_model, "problems.options.count": 2, "problems.options.seed": 0,
        "env.step_check": None, "search.options.beam_width": 1, "search.options.evaluator.model": str(folder),
        **overrides})


def test_beam_values_steps_by_the_pavs_progress_along_the_path(pav_dir, byte_model, model_tutor, tmp_path):
    from treepref.verifiers.trained import load_trained

    pav = load_trained(pav_dir)
    run = guided(pav_dir, byte_model, model_tutor, tmp_path / "sum")
    for tree in run.trees():
        valued = [n for n in range(1, len(tree)) if "pav" in tree.scores[n]]
        assert len(valued) >= 2
        for n in valued:  # by hand: tanh of the head along the path (the tree's ids), summed, clipped, (1 + x) / 2
            a = pav.score_ids(tree.token_ids[0], [tree.token_ids[i] for i in tree.path(n)])
            want = (1 + max(-1.0, min(1.0, sum(a)))) / 2
            assert tree.scores[n]["pav"] == pytest.approx(want, abs=1e-6) == tree.scores[n]["beam"]
            assert tree.scores[n]["pav_advantage"] == pytest.approx(a[-1], abs=1e-6)
        first = [n for n in tree.children(0) if n in valued]
        assert tree.meta["beams"][0] == [max(first, key=lambda n: tree.scores[n]["pav"])]  # the PAV's choice kept
    last = guided(pav_dir, byte_model, model_tutor, tmp_path / "last", **{"search.options.evaluator.aggregate": "last"})
    for tree in last.trees():
        for n in (n for n in range(1, len(tree)) if "pav" in tree.scores[n]):
            assert tree.scores[n]["pav"] == pytest.approx((1 + tree.scores[n]["pav_advantage"]) / 2, abs=1e-6)


def test_the_pav_loop_runs_on_the_tutor(byte_model, model_tutor, tmp_path):
    """configs/pav.yaml -> configs/train-pav.yaml -> configs/pav-guided-beam.yaml, the tutor in place of the
    policy and the byte model in place of SmolLM2: the export's advantages train a PAV whose folder the guided
    search loads, and every valued node records its score."""
    import treepref

    gen = treepref.generate("configs/pav.yaml", tmp_path / "pav", overrides={
        **model_tutor, "model.name": byte_model, "problems.options.count": 2})
    summary = treepref.train("configs/train-pav.yaml", tmp_path / "train-pav", overrides={
        "data": str(gen.folder), "model": byte_model, "train.max_steps": 2, "train.progress": False})
    assert summary["method"] == "pav" and summary["examples"] > 0 and summary["retokenized_rows"] == 0
    run = guided(summary["model"], byte_model, model_tutor, tmp_path / "guided")
    trees = list(run.trees())
    assert len(trees) == 2 and all(any("pav" in s for s in t.scores) for t in trees)
