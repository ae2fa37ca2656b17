"""A run driven by a recipe, the one way ``treepref generate`` and ``treepref.generate`` both make it.

The steps, in order, each a function that the command line and the Python API call alike:

1. ``prepare``: load and check the recipe once, read the problems, try the environment, the model and the
   executor, and compare the recipe with the run folder's. Every user mistake is raised here, before the folder
   is touched or an engine starts: ``ConfigError`` (the recipe), ``UserInputError`` (the rest; a
   ``RecipeMismatch`` and ``NoProblems`` among them), each a one-line ``ValueError``.
2. ``start``: the attempt's records (the previous attempt moved to ``attempts/<n>/``, ``config.yaml``,
   ``recipe.json``, ``problem_errors.jsonl``).
3. ``search_problems``: every problem without a tree, on one event loop or on Ray actors (``run.executor``).
4. ``finish``: the recipe's exports (``export_run``; ``extract`` is the same for other formats and options)
   and ``summary.json``.

Printing, exit codes, signals and the engine log are the command line's (``treepref.cli``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from treepref.config import Config, ConfigError, config_from_dict, load_config, override_items, read_yaml, set_path
from treepref.context import build_context, search_context  # noqa: F401  (the run's context, also Ray's)
from treepref.errors import UserInputError
from treepref.problems import Problem

ConfigLike = Union[str, os.PathLike, Mapping, Config]
Overrides = Union[Mapping[str, Any], Iterable[str], None]
STEP_PAIR_FORMATS = ("step_pairs", "step_apo")  # the formats the arithmetic oracle grades


class NoProblems(UserInputError):
    """Not one problem could be read; ``errors`` holds the rows that could not be (file, line, field, reason)."""

    def __init__(self, errors: list) -> None:
        self.errors = list(errors)
        more = f" ({len(self.errors)} bad rows)" if self.errors else ""
        super().__init__(f"no problems to search{more}")


@dataclass
class Plan:
    """A checked run that has not started: the recipe, where it goes, and what it searches."""

    cfg: Config
    out: Path
    problems: list[Problem]
    errors: list  # rows of the problems source that could not be read (``problems.ProblemError``)
    recipe: dict[str, str]  # the fingerprint ``recipe.json`` records
    forced: list[str]  # the recipe parts a forced rerun changed ([] without force)
    started: float = field(default=0.0)  # when ``start`` wrote the attempt's records (time.time())


# -- 1. prepare ------------------------------------------------------------------------------------------
def resolve_config(config: ConfigLike, overrides: Overrides = None) -> Config:
    """A recipe from a file, a mapping or a ``Config``, with ``--set``-style overrides (``"key=value"`` strings,
    values read as YAML, or a mapping of dotted keys to values), checked once. A ``Config`` without overrides
    is taken as it is."""
    if isinstance(config, Config) and not overrides:
        return config
    source = config.source if isinstance(config, Config) else None  # a Config keeps naming its file
    data, given = _recipe_data(config.to_dict() if isinstance(config, Config) else config, overrides,
                               "a YAML file, a mapping or a Config")
    return config_from_dict(data, source or given)


def read_problems(cfg: Config) -> tuple[list[Problem], list]:
    """The recipe's problems and the rows that could not be read; a missing file or an unknown source is a
    one-line error."""
    from treepref.domains import build_problems

    try:
        return build_problems(cfg.problems.source, **cfg.problems.options)
    except (FileNotFoundError, ValueError) as exc:
        raise UserInputError(f"{cfg.source}: problems: {exc}") from None


def prepare(config: ConfigLike, output: str | os.PathLike | None = None, *, overrides: Overrides = None,
            force: bool = False) -> Plan:
    """Everything a user can get wrong, checked before the run folder is touched or an engine starts."""
    cfg = resolve_config(config, overrides)
    out = Path(output or cfg.run.output)
    problems, errors = read_problems(cfg)
    if not problems:
        raise NoProblems(errors)
    from treepref.run_folder import check_recipe, fingerprint

    try:
        _check_ready(cfg, problems)
        recipe = fingerprint(cfg, problems)
        forced = check_recipe(out, recipe, force=force)
    except UserInputError:
        raise
    except ValueError as exc:  # an environment, model or executor that cannot run here
        raise UserInputError(str(exc)) from None
    return Plan(cfg, out, problems, errors, recipe, forced)


def _check_ready(cfg: Config, problems: list[Problem]) -> None:
    from treepref.config import env_settings
    from treepref.envs import probe_env
    from treepref.models import check_model

    probe_env(cfg.env.name, env_settings(cfg), problems, cfg.source)  # a constructor or reset that fails
    check_model(cfg.model.name)
    if cfg.run.executor == "ray":
        from treepref.executors import require_ray

        require_ray()  # a one-line error when the extra is missing (MissingExtra is a ValueError)


# -- 2. start --------------------------------------------------------------------------------------------
def start(plan: Plan) -> None:
    """Begin an attempt: the previous one's records go to ``attempts/<n>/``, this one's recipe is written."""
    import yaml

    from treepref.run_folder import start_attempt, write_recipe
    from treepref.tree import atomic_write_text

    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    start_attempt(out)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(plan.cfg.to_dict(), sort_keys=False))
    write_recipe(out, plan.recipe, plan.forced)
    if plan.errors:
        lines = [json.dumps(_error_dict(e), ensure_ascii=False) for e in plan.errors]
        atomic_write_text(out / "problem_errors.jsonl", "\n".join(lines) + "\n")
    plan.started = time.time()


def _error_dict(err) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(err):
        return dataclasses.asdict(err)
    return {"error": str(err)}


def notes(plan: Plan) -> list[str]:
    """What to tell the user once the attempt has started: a recipe continued by force, the rows skipped."""
    lines = []
    if plan.forced:
        lines.append(f"--force: continuing {plan.out} with a new recipe ({', '.join(plan.forced)} changed)")
    lines += [f"skipped bad problem: {e}" for e in plan.errors[:20]]
    if len(plan.errors) > 20:
        lines.append(f"... {len(plan.errors) - 20} more in {plan.out / 'problem_errors.jsonl'}")
    return lines


# -- 3. search -------------------------------------------------------------------------------------------
def search_problems(plan: Plan, *, progress: bool = False, progress_file=None):
    """Search every problem that has no tree yet; returns the ``RunSummary``. Raises ``ExecutorError`` when the
    Ray executor cannot run at all, and ``KeyboardInterrupt`` as it comes (the trees written are kept)."""
    cfg = plan.cfg
    if cfg.run.executor == "ray":  # problems sharded over Ray actors (docs/scaling.md)
        from treepref.executors.ray import run_config

        return run_config(cfg, plan.problems, plan.out, progress=progress, progress_file=progress_file)
    return run_coroutine(search_local(cfg, plan.problems, plan.out, progress=progress, progress_file=progress_file))


def run_coroutine(coro):
    """``asyncio.run``, also where this thread already runs a loop (a notebook): then on a thread of its own,
    as the engine binds to the loop that first uses it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def body() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=body, name="treepref-run")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def search_local(cfg: Config, problems: list[Problem], out: Path, *, progress: bool = False,
                       progress_file=None):
    """The local executor: one policy, ``run.concurrency`` searches in flight on this event loop."""
    from treepref.backends import make_policy
    from treepref.runner import Retry, pending, run_problems
    from treepref.search import build_config, get_search

    search_fn = get_search(cfg.search.name)
    search_cfg = build_config(cfg.search.name, cfg.search.options, cfg.source)
    retry = Retry(cfg.run.retries, cfg.run.retry_backoff_s, cfg.run.request_timeout_s)
    options = dict(concurrency=cfg.run.concurrency, resume=cfg.run.resume, retry=retry, progress=progress,
                   progress_file=progress_file, share_budget=cfg.run.share_budget)
    if cfg.run.resume and not pending(problems, out):  # a finished run: no model to load
        return await run_problems(problems, search_fn, search_cfg, None, out, **options)
    policy = make_policy(cfg.model.backend, cfg.model.name, **cfg.model.options)
    try:
        return await run_problems(problems, search_fn, search_cfg, build_context(cfg, policy), out, **options)
    finally:
        await close_policy(policy)


async def close_policy(policy) -> None:
    close = getattr(policy, "close", None)
    if close is not None:
        result = close()
        if asyncio.iscoroutine(result):
            await result


# -- 4. finish -------------------------------------------------------------------------------------------
def finish(plan: Plan, summary, *, extract: bool = True) -> dict:
    """The recipe's exports (unless ``extract`` is off) and ``summary.json``; returns what it holds."""
    from treepref.runner import write_json

    cfg, out = plan.cfg, plan.out
    result = {"config": cfg.source, "output": str(out), **summary.to_dict()}
    if extract:
        e = cfg.extract
        result["exports"] = export_run(out, cfg, e.formats, e.rule, e.value, e.layout, e.options)
    result["total_wall_time_s"] = round(time.time() - plan.started, 3)
    result["look"] = {"viewer": f"treepref view {out}  ->  {out / 'view.html'}",
                      "report": f"treepref report {out}  ->  {out / 'report' / 'index.html'}"}
    write_json(out / "summary.json", result)
    return result


def failures_line(summary, out: Path) -> str:
    """How many problems failed and where the details are (one line)."""
    return f"{summary.failed} of {summary.problems} problems failed; details in {Path(out) / 'errors.jsonl'}"


def run_config(run: str | os.PathLike) -> Config:
    """The recipe a run folder was written with."""
    run = Path(run)
    path = run / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run}: not a run folder (no config.yaml); run treepref generate first")
    return load_config(path)


def extract(run: str | os.PathLike, *, cfg: Config | None = None, formats: list[str] | None = None,
            rule: str | None = None, value: str | None = None, layout: str | None = None,
            options: Mapping[str, Any] | None = None) -> dict:
    """Export a run's trees again: each setting left None is the recipe's. The recipe's options go to the
    formats that take them; an option given here must be taken by one of ``formats``."""
    run = Path(run)
    cfg = cfg or run_config(run)
    formats = list(formats or cfg.extract.formats)
    from treepref.extract import FORMATS, RULES

    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"--format: unknown format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    rule = rule or cfg.extract.rule
    if rule is not None and rule not in RULES:
        raise ConfigError(f"--rule: unknown rule {rule!r} (known: {', '.join(sorted(RULES))})")
    try:
        chosen = {**_recipe_options(cfg, formats, rule), **(options or {})}
        return export_run(run, cfg, formats, rule, value or cfg.extract.value, layout or cfg.extract.layout, chosen)
    except ValueError as exc:  # an option a format does not take, a value no tree has, ...
        raise UserInputError(str(exc)) from None


def _recipe_options(cfg: Config, formats: list[str], rule: str | None) -> dict:
    """The recipe's ``extract.options`` that one of ``formats`` takes (the rest were for its other formats)."""
    from treepref.extract import FORMATS
    from treepref.extract.api import option_names

    takes = set().union(*(option_names(f, rule if FORMATS[f].default_rule is not None else None) for f in formats))
    return {k: v for k, v in cfg.extract.options.items() if k in takes}


def export_run(run: Path, cfg: Config, formats, rule, value, layout, options) -> dict:
    """Write ``exports/<format>/`` for each format and return each one's row counts (why none, where a pair
    format has none; the oracle's label quality on built-in arithmetic)."""
    from treepref.extract import FORMATS, template_from_tokenizer, write_export
    from treepref.extract.api import options_per_format
    from treepref.few_shot import load_shots
    from treepref.models import resolve_model
    from treepref.runner import load_trees

    import datasets

    datasets.disable_progress_bars()  # one bar per shard per format drowns the run's own output
    run = Path(run)
    trees = load_trees(run)
    template, shots = None, ()
    if not all(t.has_text for t in trees):  # trees from before environments recorded their text: re-render
        model = resolve_model(cfg.model.name)
        template = template_from_tokenizer(model) if os.path.isdir(model) else None
        shots = load_shots(cfg.env.few_shot, cfg.source)  # once, not once per format (it may read a file)
    results = {}
    per_format = options_per_format(formats, rule, options)  # each format the options it takes
    for fmt in formats:
        takes_rule = FORMATS[fmt].default_rule is not None  # trees, stepwise, ... have no pair rule
        stats = write_export(trees, run / "exports" / fmt, fmt, template=template, layout=layout,
                             rule=rule if takes_rule else None, value=value, recipe=Path(cfg.source).stem,
                             system=_system(cfg), delimiter=cfg.env.delimiter,
                             few_shot=shots, **per_format[fmt])
        results[fmt] = {k: stats[k] for k in ("rows", "mean_rows_per_problem", "share_with_rows",
                                              "generated_tokens_per_row") if k in stats}
        if takes_rule and not stats.get("rows"):  # say why, where the rows cannot
            from treepref.explain import zero_pairs_reason

            results[fmt]["why"] = zero_pairs_reason(trees, cfg.env.success, per_format[fmt])
        if cfg.problems.source == "arithmetic" and fmt in STEP_PAIR_FORMATS:
            results[fmt]["label_quality"] = label_quality(run / "exports" / fmt, trees, cfg)
    return results


def label_quality(folder: Path, trees, cfg: Config) -> dict:
    """On built-in arithmetic every step can be checked: the oracle's classes of every pair. The problems'
    expressions and intermediates come from the trees, which record them (older trees: regenerated)."""
    from treepref.domains import build_problems
    from treepref.extract.quality import pair_label_quality
    from treepref.runner import write_json

    problems = {t.problem_id: Problem(t.problem_id, t.prompt, t.answer, meta=t.meta["problem_meta"])
                for t in trees if t.meta.get("problem_meta")}
    if len(problems) < len(trees):
        problems = {p.id: p for p in build_problems(cfg.problems.source, **cfg.problems.options)[0]} | problems
    with open(folder / "rows.jsonl", encoding="utf-8") as f:
        quality = pair_label_quality((json.loads(line) for line in f), problems)
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    stats["label_quality"] = quality
    write_json(folder / "stats.json", stats)
    return quality


# -- training on a run's exports -------------------------------------------------------------------------
def train(config, output: str | os.PathLike | None = None, *, overrides: Overrides = None) -> dict:
    """Train as a ``treepref train`` recipe says (a YAML file, a mapping shaped like one, or a ``TrainConfig``):
    the data's columns are checked before a model loads (a bad row is a one-line ``UserInputError``); returns
    the training summary (``method``, ``examples``, ``steps``, ``train_loss``, ``model``: where it was written)."""
    from treepref.train.config import TrainConfig, train_config_from_dict
    from treepref.train.data import TrainDataError, load_rows

    if isinstance(config, TrainConfig):
        if overrides:
            raise UserInputError("train: overrides apply to a recipe file or mapping, not to a TrainConfig")
        cfg = copy.copy(config)
    else:
        cfg = train_config_from_dict(*_recipe_data(config, overrides, "a YAML file, a mapping or a TrainConfig"))
    if output is not None:
        cfg.output = str(output)
    try:
        load_rows(cfg.data, cfg.method, cfg.format)  # columns checked before a model loads
        from treepref.train.trainer import train as fit

        return fit(cfg)
    except TrainDataError as exc:
        raise UserInputError(str(exc)) from None


def _recipe_data(config, overrides: Overrides, kinds: str = "a YAML file or a mapping") -> tuple[dict, str]:
    """A recipe's data and where it came from (a file or ``<dict>``), with ``--set``-style overrides applied."""
    if isinstance(config, Mapping):
        data, source = copy.deepcopy(dict(config)), "<dict>"
    elif isinstance(config, (str, os.PathLike)):
        data, source = read_yaml(config), str(config)
    else:
        raise UserInputError(f"config: expected {kinds}, got {type(config).__name__}")
    for key, value, label in override_items(overrides):
        set_path(data, key.split("."), value, f"override {label!r}")
    return data, source


def _system(cfg: Config):
    from treepref.envs.reasoning import DEFAULT_SYSTEM

    return DEFAULT_SYSTEM if cfg.env.system == "default" else cfg.env.system


__all__ = ["NoProblems", "Plan", "build_context", "export_run", "extract", "failures_line", "finish", "notes",
           "prepare", "read_problems", "resolve_config", "run_config", "search_context",
           "search_problems", "start", "train"]
