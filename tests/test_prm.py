"""PRM scoring: (a) step tags on the real SmolLM2 (not a trained PRM: shape, range, positions, batching);
(b) a token-classification head on a tiny random model built from a config."""

from __future__ import annotations

import asyncio

import pytest
import torch

from treepref.problems import Problem
from treepref.verifiers.prm import StepTagPRM, TokenClassPRM

P1 = Problem(id="a", prompt="What is 12 + 7?", answer="19")
P2 = Problem(id="b", prompt="Compute 3 * (4 + 1).", answer="15")
S1 = ["12 + 7 = 19.", "So the total is 19.", "The answer is 19."]
S2 = ["4 + 1 = 5, and 3 * 5 = 15.", "The answer is 15."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a shared 2-core machine, torch's OpenMP threads spin against other processes: one thread was
    # ~10x faster here than two under load.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tag_prm(model_dir):
    return StepTagPRM(model_dir, tag=" ки", good="+", bad="-", dtype="float32", batch_size=8)


def _manual(prm, enc, good_bad=True):
    with torch.inference_mode():
        logits = prm.model(input_ids=torch.tensor([enc.ids])).logits[0, enc.positions].float()
    return prm._read(logits).tolist()


def test_step_tag_shape_range_positions_batching(tag_prm):
    both = asyncio.run(tag_prm([P1, P2, P1], [S1, S2, S1[:2]]))
    prefix = both.pop()
    assert [len(s) for s in both] == [3, 2]
    assert all(0.0 < x < 1.0 for s in both for x in s)
    # Batched == alone (right padding keeps positions; causal attention ignores the padding).
    alone = asyncio.run(tag_prm([P2], [S2]))
    assert alone[0] == pytest.approx(both[1], abs=1e-4)
    # Each read position is the last token of a tag, and the score there is softmax over {+, -}.
    enc = tag_prm.encode(P1, S1)
    n = len(tag_prm.tag_ids)
    assert all(enc.ids[p - n + 1:p + 1] == tag_prm.tag_ids for p in enc.positions)
    assert both[0] == pytest.approx(_manual(tag_prm, enc), abs=1e-4)
    # Causality: a step's score does not depend on later steps.
    assert prefix == pytest.approx(both[0][:2], abs=1e-4)
    assert asyncio.run(tag_prm([P1], [[]])) == [[]]


@pytest.fixture(scope="module")
def tiny_tc(model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForTokenClassification

    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2,
                         pad_token_id=tok.pad_token_id or 0)
    model = LlamaForTokenClassification(config).float()
    return TokenClassPRM(model_obj=model, tokenizer=tok, separator="\n", batch_size=4)


def test_token_classification_prm(tiny_tc):
    both = asyncio.run(tiny_tc([P1, P2], [S1, S2]))
    assert [len(s) for s in both] == [3, 2]
    assert all(0.0 < x < 1.0 for s in both for x in s)
    alone = asyncio.run(tiny_tc([P1], [S1]))
    assert alone[0] == pytest.approx(both[0], abs=1e-5)
    # Read at the last token of "step + separator", the way TRL's PRMTrainer places the labels.
    enc = tiny_tc.encode(P1, S1)
    ends, ids = [], [tiny_tc.tokenizer.bos_token_id] if tiny_tc.tokenizer.bos_token_id is not None else []
    ids += tiny_tc._tok(P1.question)
    for s in S1:
        ids += tiny_tc._tok(s + "\n")
        ends.append(len(ids) - 1)
    assert enc.ids == ids and enc.positions == ends
    assert both[0] == pytest.approx(_manual(tiny_tc, enc), abs=1e-5)
