"""``treepref train``: step-DPO, Step-APO, TPO, a pairwise verifier, a stepwise PRM and a PAV on treepref exports.

Built on ``transformers.Trainer`` (optimiser, schedules, accelerate for one or many GPUs, checkpoints and
resume, the progress bar, logging); only ``compute_loss`` is ours, calling the pure losses of
``train.losses`` on the token ids of ``train.data``. TRL's ``DPOTrainer`` is not used: it re-tokenises the
text columns over our ids and appends EOS to every completion (a mid-solution step would teach the model to
stop), and it has no per-pair weights or Q margins (docs/architecture.md).

Reference log-probs are computed once, before training, with the starting model (under LoRA that is the
base model the adapters start from), and cached in ``output/reference_logps.json`` keyed by the model and
the examples, so a resumed run reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from transformers import Trainer

from treepref.tokens import question_ids
from treepref.train import losses
from treepref.train.batches import COLLATE, pair_batch, list_batch
from treepref.train.config import TrainConfig
from treepref.train.data import TrainDataError, examples as load_examples

log = logging.getLogger(__name__)

POLICY_METHODS = ("dpo", "step_apo", "tpo")
SUMMARY = "treepref-train.json"  # written next to the saved model: what it was trained on and how


# -- losses on a batch --------------------------------------------------------------------------------
def policy_logps(model, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return losses.sequence_logps(logits, batch["input_ids"], batch["completion_mask"])


def pair_loss(model, batch: dict, cfg: TrainConfig) -> losses.LossOutput:
    lp = policy_logps(model, batch)
    n = lp.shape[0] // 2
    ref, loss = batch["ref"], cfg.loss
    args = (lp[:n], lp[n:], ref[:n], ref[n:])
    weights = batch["weight"] if loss.weighting == "weight" else None
    if cfg.method == "step_apo":
        q = batch["q"]
        return losses.step_apo_loss(*args, q[:n], q[n:], beta=loss.beta, alpha=loss.alpha, weights=weights)
    eps = losses.smoothing_from_weight(batch["weight"]) if loss.weighting == "smoothing" else loss.label_smoothing
    return losses.dpo_loss(*args, beta=loss.beta, weights=weights, label_smoothing=eps)


def list_loss(model, batch: dict, cfg: TrainConfig) -> losses.LossOutput:
    lp, index = policy_logps(model, batch), batch["index"].clamp(min=0)
    adaptive = cfg.loss.tpo_weighting == "adaptive"
    return losses.tpo_loss(lp[index], batch["ref"][index], batch["scores"], batch["mask"], beta=cfg.loss.beta,
                           weighting="uniform" if adaptive else cfg.loss.tpo_weighting,
                           pair_weights=batch["distinct"] if adaptive else None)


def verifier_scores(model, batch: dict) -> torch.Tensor:
    """A sequence-classification head's score of each row (read at its last token: rows are right-padded and
    hold no pad id at their end, which ``check_last_tokens`` makes sure of)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()


def verifier_loss(model, batch: dict, cfg: TrainConfig) -> losses.LossOutput:
    s = verifier_scores(model, batch)
    n = s.shape[0] // 2
    return losses.bradley_terry_loss(s[:n], s[n:])


def step_outputs(model, batch: dict) -> torch.Tensor:
    """A token head's outputs at every labelled step: ``[N, num_labels]``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return logits[batch["rows"], batch["positions"]]


def prm_loss(model, batch: dict, cfg: TrainConfig) -> losses.LossOutput:
    """BCE on logit(good) - logit(bad) of the 2-class head (its softmax class 1 is what
    ``verifiers.prm.TokenClassPRM`` reads)."""
    at = step_outputs(model, batch)
    return losses.stepwise_bce(at[:, 1] - at[:, 0], batch["labels_"], pos_weight=cfg.loss.pos_weight)


def pav_loss(model, batch: dict, cfg: TrainConfig) -> losses.LossOutput:
    """Squared error of tanh of the 1-output head against each step's advantage (``verifiers.trained.TrainedPAV``
    reads the same tanh)."""
    return losses.advantage_mse(step_outputs(model, batch)[:, 0], batch["labels_"])


LOSSES = {"dpo": pair_loss, "step_apo": pair_loss, "tpo": list_loss, "verifier": verifier_loss, "prm": prm_loss,
          "pav": pav_loss}


class TreeprefTrainer(Trainer):
    """``transformers.Trainer`` with a treepref loss; the loss's metrics are averaged into each log line."""

    loss_is_scaled_for_ga = False  # our losses are per-batch means

    def __init__(self, *args, treepref_config: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.treepref_config = treepref_config
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = LOSSES[self.treepref_config.method](model, inputs, self.treepref_config)
        for k, v in out.metrics.items():
            self._metrics[k].append(float(v))
        return (out.loss, None) if return_outputs else out.loss

    def log(self, logs: dict, start_time=None):
        if "loss" in logs and self._metrics:
            logs.update({k: round(sum(v) / len(v), 6) for k, v in self._metrics.items()})
            self._metrics.clear()
        super().log(logs, start_time)


class _Examples(torch.utils.data.Dataset):
    def __init__(self, items: Sequence):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# -- models -------------------------------------------------------------------------------------------
def load_model(method: str, name: str, *, pad_id: int):
    """The model a method trains: the causal LM itself, or the same weights under a fresh head (a 1-logit
    sequence classifier for the pairwise verifier, a token classifier with 2 classes for the PRM and 1 output
    for the PAV)."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    if method in POLICY_METHODS:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    elif method == "verifier":
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, dtype=torch.float32)
    else:
        # No dropout on the hidden state the label is read from (transformers' default 0.1): a PRM reads one
        # token per step, and the noise drowned the small differences between steps in our direction tests.
        config = AutoConfig.from_pretrained(name, num_labels=2 if method == "prm" else 1)
        config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(name, config=config, dtype=torch.float32)
    model.config.pad_token_id = pad_id
    return model


def check_last_tokens(items: Sequence, pad_id: int) -> None:
    """A sequence classifier reads a row's last non-pad token; a row ending in the pad id would be read early."""
    for e in items:
        for side in (e.chosen, e.rejected):
            last = (side or e.prompt)[-1]
            if last == pad_id:
                raise ValueError(f"a verifier example ends in the pad id {pad_id}; its score would be misread")


# -- reference log-probs ------------------------------------------------------------------------------
def _key(model_name: str, items: Sequence) -> str:
    h = hashlib.sha256(model_name.encode())
    for e in items:
        h.update(json.dumps([e.prompt, getattr(e, "chosen", None), getattr(e, "rejected", None),
                             getattr(e, "responses", None)]).encode())
    return h.hexdigest()


@torch.no_grad()
def reference_logps(model, items: Sequence, method: str, *, pad_id: int, batch_size: int, device) -> list:
    """Summed log-probs of every completion under ``model`` (pairs: (chosen, rejected); lists: one per response)."""
    model.eval()
    out: list = []
    collate = pair_batch if method != "tpo" else list_batch
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        lp = policy_logps(model, batch).cpu().tolist()
        if method == "tpo":
            out += [[lp[i] for i in row if i >= 0] for row in batch["index"].cpu().tolist()]
        else:
            n = len(chunk)
            out += [(lp[i], lp[n + i]) for i in range(n)]
    model.train()
    return out


def attach_reference(model, items: Sequence, cfg: TrainConfig, model_name: str, out: Path, *, pad_id: int,
                     device) -> bool:
    """Fill each example's ``ref``, from the cache when it matches; returns whether the cache was used."""
    from treepref.tree import atomic_write_text

    cache, key = out / "reference_logps.json", _key(model_name, items)
    values = None
    if cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            values = saved["values"]
    hit = values is not None
    if not hit:
        values = reference_logps(model, items, cfg.method, pad_id=pad_id, batch_size=cfg.train.reference_batch_size,
                                 device=device)
        atomic_write_text(cache, json.dumps({"key": key, "values": values}))
    for e, v in zip(items, values):
        e.ref = tuple(v) if cfg.method != "tpo" else list(v)
    return hit


# -- the run ------------------------------------------------------------------------------------------
def _lora(model, options: dict, method: str):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RuntimeError("train.lora needs peft: pip install 'treepref[train]'") from None
    task = {"verifier": "SEQ_CLS", "prm": "TOKEN_CLS", "pav": "TOKEN_CLS"}.get(method, "CAUSAL_LM")
    cfg = LoraConfig(r=int(options.get("r", 8)), lora_alpha=int(options.get("alpha", 16)),
                     lora_dropout=float(options.get("dropout", 0.0)),
                     target_modules=options.get("target_modules", "all-linear"), task_type=task)
    return get_peft_model(model, cfg)


def last_checkpoint(folder: Path) -> str | None:
    ckpts = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def balanced_pos_weight(items: Sequence, source: str) -> float:
    """``loss.pos_weight: balanced``: the negative label mass over the positive (soft labels count fractionally)."""
    labels = [y for ex in items for y in ex.labels]
    pos = sum(labels)
    neg = len(labels) - pos
    if pos <= 0 or neg <= 0:
        raise TrainDataError(f"{source}: loss.pos_weight: balanced needs positive and negative step labels; "
                             f"got {pos:g} positive and {neg:g} negative")
    return neg / pos


def train(cfg: TrainConfig) -> dict:
    """Train ``cfg.method`` on ``cfg.data``; the model lands in ``cfg.output/model`` with its summary."""
    from transformers import AutoTokenizer, TrainingArguments, set_seed

    from treepref.models import resolve_model
    from treepref.tree import atomic_write_text

    name = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(name)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    items, builder = load_examples(cfg.data, cfg.method, eos_id=eos, fmt=cfg.format, tokenizer=tokenizer,
                                   labels=cfg.loss.labels, weights="weight" if cfg.loss.weighting != "none" else "none",
                                   max_length=cfg.train.max_length,
                                   question_ids=(partial(question_ids, tokenizer) if cfg.input == "question"
                                                 else None))
    if builder.retokenized:
        log.warning("%d rows had no token ids and were encoded from their text", builder.retokenized)
    if cfg.method == "verifier":
        check_last_tokens(items, pad)
    given = cfg  # the summary keeps the recipe as written, and the number the loss read
    if cfg.loss.pos_weight == "balanced":
        weight = balanced_pos_weight(items, cfg.data)
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, pos_weight=weight))

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    set_seed(cfg.train.seed)  # a new head's initial weights follow the recipe's seed too (Trainer seeds only later)
    model = load_model(cfg.method, name, pad_id=pad)
    cached = None
    if cfg.method in POLICY_METHODS:
        cached = attach_reference(model.to(device), items, cfg, name, out, pad_id=pad, device=device)
    if cfg.train.lora is not None:
        model = _lora(model, cfg.train.lora, cfg.method)

    opt = cfg.train
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=opt.batch_size,
        gradient_accumulation_steps=opt.grad_accum, learning_rate=opt.learning_rate, num_train_epochs=opt.epochs,
        max_steps=opt.max_steps, warmup_steps=opt.warmup_ratio, weight_decay=opt.weight_decay, seed=opt.seed,
        logging_steps=opt.logging_steps, save_steps=opt.save_steps, save_total_limit=opt.save_total_limit,
        bf16=cuda if opt.bf16 is None else opt.bf16, use_cpu=not cuda, remove_unused_columns=False,
        report_to=[], disable_tqdm=not opt.progress, dataloader_num_workers=0, save_only_model=False)
    trainer = TreeprefTrainer(model=model, args=args, train_dataset=_Examples(items),
                              data_collator=partial(COLLATE[cfg.method], pad_id=pad), treepref_config=cfg)
    resume = last_checkpoint(out / "checkpoints") if cfg.resume else None
    result = trainer.train(resume_from_checkpoint=resume)

    final = trainer.model
    if cfg.train.lora is not None:
        final = final.merge_and_unload()  # an ordinary Hugging Face folder, loadable without peft
    target = out / "model"
    final.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    summary = {"method": cfg.method, "data": str(cfg.data), "base_model": name, "model": str(target),
               "examples": len(items), "retokenized_rows": builder.retokenized, "dropped_too_long": builder.too_long,
               "skipped_steps": builder.skipped_steps, "dropped_unlabelled": builder.unlabelled,
               "reference_cache_used": cached, "resumed_from": resume, "steps": trainer.state.global_step,
               "train_loss": result.training_loss, "pos_weight": cfg.loss.pos_weight,
               "log": [r for r in trainer.state.log_history if "loss" in r or "train_loss" in r],
               "config": given.to_dict()}
    atomic_write_text(target / SUMMARY, json.dumps(summary, indent=1, default=str))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary
