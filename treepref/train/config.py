"""``treepref train`` recipes: one YAML file, validated before a model or a row is loaded (as ``generate``'s)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from treepref.config import ConfigError, build_section, read_yaml
from treepref.train.data import METHODS, NEEDS

WEIGHTINGS = ("none", "weight", "smoothing")
LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


@dataclass
class LossSection:
    beta: float = 0.1  # the DPO temperature on log-ratios (dpo, step_apo, tpo)
    alpha: float = 1.0  # step_apo: weight of the Q margin
    label_smoothing: float = 0.0  # dpo: conservative-DPO ε for every pair
    weighting: str = "none"  # dpo/step_apo: none | weight (the export's weight as loss weight) |
    #                          smoothing (ε = (1 - weight) / 2 per pair: MCTS-DPO's visit confidence)
    tpo_weighting: str = "uniform"  # tpo: uniform | lambda (LiPO-λ) | adaptive (pairs of near-identical
    #                                 responses count less: 1 - Jaccard similarity of their tokens)
    labels: str = "hard"  # prm: hard (labels) | soft (soft_labels)
    pos_weight: float | str | None = None  # prm: weight of a positive label's BCE term: a number, or balanced (the
    #                                        training set's negative mass ÷ positive mass: both classes weigh alike)


@dataclass
class OptimSection:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4  # pairs (lists, PRM rows) per device and step
    grad_accum: int = 1
    learning_rate: float = 5e-6
    warmup_ratio: float = 0.0  # a share of the steps (transformers reads a float < 1 in warmup_steps so)
    weight_decay: float = 0.0
    seed: int = 0
    max_length: int | None = 2048  # longer examples are dropped (and counted), never cut
    logging_steps: int = 10
    save_steps: int = 200  # a checkpoint every this many steps (resume picks the last one)
    save_total_limit: int = 2
    bf16: bool | None = None  # None: bf16 mixed precision on a GPU, fp32 on CPU
    lora: dict | None = None  # {r, alpha, dropout, target_modules}: train LoRA adapters (peft), merged at the end
    reference_batch_size: int = 8  # pairs per forward pass when computing reference log-probs
    progress: bool = True


@dataclass
class TrainConfig:
    method: str = "dpo"  # dpo (step-DPO on step pairs, or plain DPO on trajectory_pairs) | step_apo | tpo |
    #                      verifier (pairwise, Bradley-Terry) | prm (stepwise BCE) | pav (stepwise regression on
    #                      the advantages of a stepwise export made with value: advantage)
    data: str = "runs/demo"  # a run folder, an export folder, a dataset folder, .jsonl or .parquet
    format: str | None = None  # which export of a run folder (default: the method's first format)
    model: str | None = None  # the model to start from: a local folder; None: the embedded SmolLM2
    output: str = "runs/train"
    input: str = "policy"  # prm/pav/verifier: what the model reads before the steps: policy (the prompt ids the
    #                        policy saw, worked examples and all) | question (its own short prompt: the question
    #                        alone in the chat template; shorter, so training and scoring are cheaper)
    resume: bool = True  # continue from the last checkpoint in output/checkpoints
    loss: LossSection = field(default_factory=LossSection)
    train: OptimSection = field(default_factory=OptimSection)
    source: str = "<defaults>"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return train_config_from_dict(read_yaml(path, overrides), str(path))


def train_config_from_dict(data: dict, source: str = "<dict>") -> TrainConfig:
    cfg = build_section(TrainConfig, data, source, "", skip=("source",))
    cfg.source = source
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    src, loss, opt = cfg.source, cfg.loss, cfg.train
    if cfg.method not in METHODS:
        raise ConfigError(f"{src}: method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    formats = NEEDS[cfg.method].formats
    if cfg.format is not None and cfg.format not in formats:
        raise ConfigError(f"{src}: format {cfg.format!r} has no {cfg.method} columns; use one of {', '.join(formats)}")
    if cfg.input not in ("policy", "question"):
        raise ConfigError(f"{src}: input must be policy or question, got {cfg.input!r}")
    if cfg.input == "question" and cfg.method not in ("prm", "pav", "verifier"):
        raise ConfigError(f"{src}: input: question is read by prm, pav and verifier (scorers); method {cfg.method} "
                          f"trains the policy, which reads its own prompt ids")
    if loss.weighting not in WEIGHTINGS:
        raise ConfigError(f"{src}: loss.weighting must be one of {', '.join(WEIGHTINGS)}, got {loss.weighting!r}")
    if loss.weighting != "none" and cfg.method not in ("dpo", "step_apo"):
        raise ConfigError(f"{src}: loss.weighting is read by dpo and step_apo only")
    if loss.tpo_weighting not in ("uniform", "lambda", "adaptive"):
        raise ConfigError(f"{src}: loss.tpo_weighting must be uniform, lambda or adaptive, "
                          f"got {loss.tpo_weighting!r}")
    if loss.labels not in ("hard", "soft"):
        raise ConfigError(f"{src}: loss.labels must be hard or soft, got {loss.labels!r}")
    if loss.pos_weight is not None:
        pw = loss.pos_weight
        number = isinstance(pw, (int, float)) and not isinstance(pw, bool)
        if not (pw == "balanced" or number and pw > 0):
            raise ConfigError(f"{src}: loss.pos_weight must be a number > 0 or balanced, got {pw!r}")
        if cfg.method != "prm":
            raise ConfigError(f"{src}: loss.pos_weight is read by prm only")
    if not 0 <= loss.label_smoothing < 0.5:
        raise ConfigError(f"{src}: loss.label_smoothing must be in [0, 0.5), got {loss.label_smoothing}")
    if loss.beta <= 0:
        raise ConfigError(f"{src}: loss.beta must be > 0, got {loss.beta}")
    for name in ("batch_size", "grad_accum", "logging_steps", "save_steps", "reference_batch_size"):
        if getattr(opt, name) < 1:
            raise ConfigError(f"{src}: train.{name} must be ≥ 1, got {getattr(opt, name)}")
    if opt.learning_rate <= 0:
        raise ConfigError(f"{src}: train.learning_rate must be > 0, got {opt.learning_rate}")
    if not 0 <= opt.warmup_ratio < 1:
        raise ConfigError(f"{src}: train.warmup_ratio must be in [0, 1), got {opt.warmup_ratio}")
    if opt.max_steps <= 0 and opt.epochs <= 0:
        raise ConfigError(f"{src}: train.epochs must be > 0 (or set train.max_steps)")
    if opt.lora is not None:
        unknown = sorted(set(opt.lora) - LORA_KEYS)
        if unknown:
            raise ConfigError(f"{src}: unknown key 'train.lora.{unknown[0]}' (known: {', '.join(sorted(LORA_KEYS))})")
