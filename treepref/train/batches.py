"""Padding examples into tensors. Right padding, so a row's positions do not depend on its batch-mates, and
one completion mask per sequence: the tokens whose log-probs count (a pair's step, never its prompt)."""

from __future__ import annotations

from typing import Sequence

import torch

from treepref.train.data import ListExample, PairExample, StepExample


def pad(seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``completion_mask`` (1 from ``starts[i]`` to the end of row i)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        attn[i, :len(s)] = 1
        comp[i, start:len(s)] = 1
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}


def pair_batch(batch: Sequence[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen sequences first, then rejected ones: rows ``i`` and ``B + i`` are one pair."""
    seqs = [e.prompt + e.chosen for e in batch] + [e.prompt + e.rejected for e in batch]
    starts = [len(e.prompt) for e in batch] * 2
    out = pad(seqs, starts, pad_id)
    out["last"] = torch.tensor([len(s) - 1 for s in seqs])
    out["weight"] = torch.tensor([e.weight for e in batch], dtype=torch.float32)
    if batch[0].ref is not None:
        out["ref"] = torch.tensor([e.ref[0] for e in batch] + [e.ref[1] for e in batch], dtype=torch.float32)
    if batch[0].q_chosen is not None:
        out["q"] = torch.tensor([e.q_chosen for e in batch] + [e.q_rejected for e in batch], dtype=torch.float32)
    return out


def list_batch(batch: Sequence[ListExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Every response of every list as one row; ``index`` [B, K] gives each list's rows (-1: no response)."""
    k = max(len(e.responses) for e in batch)
    seqs, starts, refs = [], [], []
    index = torch.full((len(batch), k), -1, dtype=torch.long)
    scores = torch.zeros((len(batch), k), dtype=torch.float32)
    for b, e in enumerate(batch):
        for j, r in enumerate(e.responses):
            index[b, j] = len(seqs)
            seqs.append(e.prompt + r)
            starts.append(len(e.prompt))
            scores[b, j] = e.scores[j]
            if e.ref is not None:
                refs.append(e.ref[j])
    out = pad(seqs, starts, pad_id)
    out.update(index=index, scores=scores, mask=index >= 0, distinct=distinctness(batch, k))
    if refs:
        out["ref"] = torch.tensor(refs, dtype=torch.float32)
    return out


def distinctness(batch: Sequence[ListExample], k: int) -> torch.Tensor:
    """[B, K, K]: 1 - Jaccard similarity of two responses' token sets (0 for identical token sets). The
    ``adaptive`` TPO weighting multiplies each pair by it, so two responses that say nearly the same thing
    (a shared prefix, a changed digit) count less than two different ways on: our reading of TPO's
    adaptive step reward, which scales a pair's reward margin by how different its steps are."""
    out = torch.zeros((len(batch), k, k), dtype=torch.float32)
    for b, e in enumerate(batch):
        sets = [set(r) for r in e.responses]
        for i, a in enumerate(sets):
            for j, c in enumerate(sets):
                union = len(a | c)
                out[b, i, j] = 1.0 - (len(a & c) / union if union else 1.0)
    return out


def step_batch(batch: Sequence[StepExample], pad_id: int) -> dict[str, torch.Tensor]:
    """PRM or PAV rows; ``rows``/``positions``/``labels_`` list every labelled step of the batch."""
    out = pad([e.ids for e in batch], [0] * len(batch), pad_id)
    rows = [b for b, e in enumerate(batch) for _ in e.positions]
    out["rows"] = torch.tensor(rows, dtype=torch.long)
    out["positions"] = torch.tensor([p for e in batch for p in e.positions], dtype=torch.long)
    out["labels_"] = torch.tensor([x for e in batch for x in e.labels], dtype=torch.float32)
    return out


COLLATE = {"dpo": pair_batch, "step_apo": pair_batch, "verifier": pair_batch, "tpo": list_batch, "prm": step_batch,
           "pav": step_batch}
