"""Run configuration: one YAML file per recipe, validated before anything heavy starts.

Every section is a dataclass. An unknown key or a value of the wrong type is an error that names the key
and the file, raised before a model is loaded, so a typo never costs a run.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treepref.options import coerce


class ConfigError(ValueError):
    """A config file is wrong; the message names the file and the key."""


@dataclass
class ModelSection:
    name: str | None = None  # a local folder, a hub id, or None for the embedded SmolLM2-135M-Instruct
    backend: str = "hf"  # hf | vllm | openai
    options: dict = field(default_factory=dict)  # passed to the backend's constructor


@dataclass
class ProblemsSection:
    # arithmetic | gsm8k | math | champ | reasoning_gym | file | shop | tools | seeds; None: the env's own
    source: str | None = None
    options: dict = field(default_factory=dict)  # keyword arguments of treepref.domains.build_problems


@dataclass
class EnvSection:
    name: str = "reasoning"  # reasoning | shop | tools | a user's class as package.module:ClassName
    options: dict = field(default_factory=dict)  # the environment's own options (its fields or constructor's)
    max_depth: int | None = None  # truncate a path after this many steps; None: the environment's default
    max_tokens: int | None = None  # truncate a path after this many generated tokens; None: its default
    system: str | None = "default"  # system message; "default": the environment's own
    success: float = 1.0  # the reward counted as solved where the environment does not say
    # the reasoning environment's options (also accepted in ``options``):
    delimiter: str = "\n\n"  # a step ends at this string
    answer_pattern: str | None = None  # regex whose first group is the final answer; None: the default
    few_shot: str | list | None = None  # worked examples: a built-in set (arithmetic), a JSONL file, or a list
    step_check: str | None = None  # a check of each step (arithmetic | arithmetic_grounded | module:function)


@dataclass
class SamplingSection:
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 96  # per step
    rollout_max_tokens: int = 384  # per Monte Carlo completion (all remaining steps)
    rollout_by_step: bool = False  # completions one step per request, ending at the first step that ends the
    # episode (a slip the step check ends): no tokens are generated past it
    seed: int | None = None


@dataclass
class SearchSection:
    name: str = "mcts"  # mcts | best_first | beam | sample
    options: dict = field(default_factory=dict)  # fields of that search's config dataclass


@dataclass
class ExtractSection:
    formats: list = field(default_factory=lambda: ["step_pairs"])
    rule: str | None = None  # pair selection rule for the pair formats; None: each format's default
    value: str | None = None  # which node value orders pairs: value | mc | reward | a scores key; None: default
    layout: str = "standard"  # standard (chat template applied) | conversational (messages)
    options: dict = field(default_factory=dict)  # filters: min_margin, max_pairs_per_node, ...


@dataclass
class RaySection:
    """``run.ray``: the actors of ``run.executor: ray`` (docs/scaling.md)."""

    address: str | None = None  # an existing cluster ("auto", "ray://head:10001"); None: a local Ray for the run
    actors: int = 1  # policies, each with its own backend (one vLLM engine per GPU)
    num_gpus: float = 0  # GPUs per actor (1 for vLLM on a GPU)
    num_cpus: float = 1  # CPUs per actor
    placement: str | None = None  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD: reserve all actors' bundles first
    actor_retries: int = 2  # a problem whose actor died is sent to another this many times, then failed
    max_replacements: int | None = None  # actors started in place of dead ones; None: 2 x actors
    start_timeout_s: float = 600.0  # actors must have built their policies within this
    log_to_driver: bool = False  # print the actors' output here (a local Ray started for the run only)


@dataclass
class RunSection:
    output: str = "runs/demo"
    concurrency: int = 8  # problems searched at once (with run.executor: ray, per actor)
    resume: bool = True  # skip problems whose tree is already written
    retries: int = 2  # more tries of a failed policy request (backoff doubling from retry_backoff_s)
    retry_backoff_s: float = 1.0
    request_timeout_s: float | None = None  # one policy request (queueing included); None: no limit
    allow_failures: bool = False  # exit 0 even when problems failed (also: generate --allow-failures)
    share_budget: bool = False  # tokens a tree leaves of its search.options.token_budget go to trees that can
                                # still widen a successful path (``search.spend.TokenPool``; local executor)
    executor: str = "local"  # local (one process) | ray (actors, docs/scaling.md)
    ray: RaySection = field(default_factory=RaySection)


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    problems: ProblemsSection = field(default_factory=ProblemsSection)
    env: EnvSection = field(default_factory=EnvSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    search: SearchSection = field(default_factory=SearchSection)
    extract: ExtractSection = field(default_factory=ExtractSection)
    run: RunSection = field(default_factory=RunSection)
    source: str = "<defaults>"  # the file this came from, for error messages

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override (``section.key=value``, value parsed as YAML) and validate a config file."""
    return config_from_dict(read_yaml(path, overrides), str(path))


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A config file's mapping with ``section.key=value`` overrides (values parsed as YAML) applied."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for key, value, label in override_items(overrides):
        set_path(data, key.split("."), value, f"override {label!r}")
    return data


def override_items(overrides) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, as given)``: a mapping's items as they are, ``"key=value"`` strings read as YAML
    (the rule of ``--set``)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(str(k), v, str(k)) for k, v in overrides.items()]
    if isinstance(overrides, str):
        overrides = [overrides]
    import yaml

    items = []
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value (section.key=value in a config)")
        items.append((key, yaml.safe_load(raw), item))
    return items


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    cfg = _build(Config, {k: v for k, v in data.items()}, source, "")
    cfg.source = source
    if cfg.problems.source is None:
        from treepref.envs import EnvError, default_problems

        try:
            cfg.problems.source = default_problems(cfg.env.name, f"{source}: env.name")
        except EnvError as exc:
            raise ConfigError(str(exc)) from None
    _validate(cfg)
    return cfg


REASONING_ONLY = {"delimiter": "\n\n", "answer_pattern": None, "few_shot": None, "step_check": None}


def env_settings(cfg: Config) -> dict:
    """The environment's keyword options from the ``env`` section: ``options``, then the shared keys
    (``max_depth``, ``max_tokens``, ``system``) where set, then the reasoning environment's own keys."""
    e, out = cfg.env, dict(cfg.env.options)
    for key in ("max_depth", "max_tokens"):
        if getattr(e, key) is not None:
            out[key] = getattr(e, key)
    if e.system != "default":
        out["system"] = e.system
    if e.name == "reasoning":
        from treepref.few_shot import load_shots

        out.setdefault("delimiter", e.delimiter)
        out.setdefault("few_shot", load_shots(e.few_shot, cfg.source))
        if e.answer_pattern:
            out.setdefault("answer_pattern", e.answer_pattern)
        if e.step_check:
            out.setdefault("step_check", e.step_check)
    return out


def set_path(data: dict, keys: list[str], value: Any, where: str) -> None:
    for k in keys[:-1]:
        nxt = data.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {k!r} is not a section")
        data = nxt
    data[keys[-1]] = value


def _build(cls, data: Any, source: str, prefix: str):
    return build_section(cls, data, source, prefix, skip=("source",) if cls is Config else ())


def build_section(cls, data: Any, source: str, prefix: str, *, skip: tuple[str, ...] = ()):
    """``cls`` (a dataclass, nested sections too) from a mapping: unknown keys and wrong types are errors
    naming the file and the key. ``skip``: fields a file may not set."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix + unknown[0]!r} (known: {', '.join(sorted(fields))})")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value or {}, source, key + ".")
        else:
            values[name] = coerce(value, kind, source=source, key=key, error=ConfigError)
    return cls(**values)


def _validate(cfg: Config) -> None:
    """Checks that need more than a type: names that must exist, numbers that must be positive."""
    src = cfg.source
    from treepref.backends import BACKENDS

    _named(BACKENDS, cfg.model.backend, src, "model.backend")  # by name: its module loads when the run starts
    for key in ("max_depth", "max_tokens"):
        if getattr(cfg.env, key) is not None and getattr(cfg.env, key) < 1:
            raise ConfigError(f"{src}: env.{key} must be >= 1")
    if cfg.env.name != "reasoning":
        for key, default in REASONING_ONLY.items():
            if getattr(cfg.env, key) != default:
                raise ConfigError(f"{src}: env.{key} is an option of the reasoning environment, not of "
                                  f"{cfg.env.name!r}")
    if not cfg.env.delimiter:
        raise ConfigError(f"{src}: env.delimiter must not be empty")
    if cfg.sampling.temperature < 0:
        raise ConfigError(f"{src}: sampling.temperature must be >= 0")
    if not 0 < cfg.sampling.top_p <= 1:
        raise ConfigError(f"{src}: sampling.top_p must be in (0, 1]")
    for key in ("max_tokens", "rollout_max_tokens"):
        if getattr(cfg.sampling, key) < 1:
            raise ConfigError(f"{src}: sampling.{key} must be >= 1")
    if cfg.run.concurrency < 1:
        raise ConfigError(f"{src}: run.concurrency must be >= 1")
    if cfg.run.retries < 0 or cfg.run.retry_backoff_s < 0:
        raise ConfigError(f"{src}: run.retries and run.retry_backoff_s must be >= 0")
    if cfg.run.request_timeout_s is not None and cfg.run.request_timeout_s <= 0:
        raise ConfigError(f"{src}: run.request_timeout_s must be > 0 (or null: no limit)")
    _check_executor(cfg.run, src)
    if cfg.extract.layout not in ("standard", "conversational"):
        raise ConfigError(f"{src}: extract.layout must be standard or conversational")
    from treepref.few_shot import FewShotError, load_shots

    try:
        load_shots(cfg.env.few_shot, src)
    except FewShotError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.env.answer_pattern is not None:
        import re

        try:
            if re.compile(cfg.env.answer_pattern).groups < 1:
                raise ConfigError(f"{src}: env.answer_pattern needs a group that captures the answer")
        except re.error as exc:
            raise ConfigError(f"{src}: env.answer_pattern is not a valid regex: {exc}") from None
    settings = env_settings(cfg)
    step_check = settings.get("step_check") if cfg.env.name == "reasoning" else None
    if step_check is not None:
        from treepref.verifiers.step_check import load_step_check

        try:
            load_step_check(step_check, source=src, key="env.step_check")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    # The environment, search and problem options are checked against the code that will receive them.
    from treepref.envs import EnvError, check_environment

    try:
        check_environment(cfg.env.name, settings, src)
    except EnvError as exc:
        raise ConfigError(str(exc)) from None
    from treepref.search import build_config

    try:
        build_config(cfg.search.name, cfg.search.options, src)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc) if src in str(exc) else f"{src}: search: {exc}") from None
    from treepref.domains import build_problems

    _check_kwargs(build_problems, cfg.problems.options, src, "problems.options")
    _check_formats(cfg, src)


def _named(registry, name: str, src: str, key: str) -> None:
    """``registry.check`` with its error as a ``ConfigError``."""
    try:
        registry.check(name, source=src, key=key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_executor(run: RunSection, src: str) -> None:
    from treepref.executors import EXECUTORS

    if run.executor not in EXECUTORS:
        raise ConfigError(f"{src}: run.executor must be one of {', '.join(EXECUTORS)}, got {run.executor!r}")
    r = run.ray
    if r.actors < 1 or r.actor_retries < 0 or (r.max_replacements or 0) < 0 or r.num_gpus < 0 or r.num_cpus < 0:
        raise ConfigError(f"{src}: run.ray: actors must be >= 1; actor_retries, max_replacements, num_gpus and "
                          "num_cpus >= 0")
    if r.placement not in (None, "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise ConfigError(f"{src}: run.ray.placement must be PACK, SPREAD, STRICT_PACK, STRICT_SPREAD or null")


def _check_kwargs(fn, options: dict, src: str, key: str) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name in options:
        if name not in params:
            raise ConfigError(f"{src}: unknown key '{key}.{name}' (known: {', '.join(p for p in params if p != 'source')})")


def _check_formats(cfg: Config, src: str) -> None:
    from treepref.extract import FORMATS, RULES

    for fmt in cfg.extract.formats:
        _named(FORMATS, fmt, src, "extract.formats")
    if cfg.extract.rule is not None:
        _named(RULES, cfg.extract.rule, src, "extract.rule")
    from treepref.extract.api import check_settings, check_value_format, options_per_format

    try:  # as the CLI exports them: the rule to the formats that take one, each format the options it takes
        per_format = options_per_format(cfg.extract.formats, cfg.extract.rule, cfg.extract.options)
        for fmt, options in per_format.items():
            rule = cfg.extract.rule if FORMATS[fmt].default_rule is not None else None
            options = dict(options)
            check_settings(fmt, layout=cfg.extract.layout, rule=rule, weight=options.pop("weight", None),
                           options={k: v for k, v in options.items() if k != "weight_k"})
    except ValueError as exc:
        raise ConfigError(f"{src}: extract.options: {exc}") from None
    for fmt in cfg.extract.formats:
        try:
            check_value_format(cfg.extract.value, fmt)
        except ValueError as exc:
            raise ConfigError(f"{src}: extract.value: {exc}") from None
