"""treepref from Python: the run a recipe describes, the run folder it leaves, and searches on your own policy.

``generate`` is ``treepref generate`` (the same checks, run folder, resume, recipe refusal and failure records,
through ``treepref.pipeline``), ``load_run`` opens a run folder, and a ``Run`` exports, views and reports it as
``treepref extract``, ``view`` and ``report`` do. ``search`` is for a policy object you already hold: trees
back, no recipe, no folder. Mistakes are one-line ``ValueError``s (``ConfigError`` for a recipe,
``UserInputError`` for the rest); nothing here prints, and nothing here exits.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treepref.config import Config
from treepref.errors import UserInputError
from treepref.pipeline import ConfigLike, Overrides
from treepref.problems import Problem

if TYPE_CHECKING:
    import datasets

    from treepref.tree import Tree

log = logging.getLogger("treepref")


class ProblemsFailed(RuntimeError):
    """Some problems' searches failed and the caller asked for an error (``allow_failures=False``); the run is
    written all the same and is ``run``: its ``errors.jsonl`` names each failure and a rerun retries them."""

    def __init__(self, message: str, run: Run) -> None:
        super().__init__(message)
        self.run = run


class Run:
    """A run folder: the recipe it was made with, its latest summary and its trees, and the exports, viewer page
    and report made from them. Reads the folder when asked, so it sees trees a running search adds."""

    def __init__(self, folder: str | os.PathLike, config: Config) -> None:
        self.folder = Path(folder)
        self.config = config

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    @property
    def summary(self) -> dict | None:
        """The latest attempt's ``summary.json`` (None before an attempt has finished)."""
        path = self.folder / "summary.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    @property
    def problems(self) -> list[str]:
        """The ids of the problems that have a tree, in the order ``trees()`` yields them."""
        return [json.loads(p.read_text(encoding="utf-8"))["problem_id"] for p in self._tree_files()]

    def trees(self) -> Iterator[Tree]:
        """Every tree, one at a time (a large run need not fit in memory at once)."""
        from treepref.tree import Tree

        for path in self._tree_files():
            yield Tree.load(path)

    def tree(self, problem_id: str) -> Tree:
        """One problem's tree; ``UserInputError`` when it has none."""
        from treepref.runner import tree_path
        from treepref.tree import Tree

        path = tree_path(self.folder, problem_id)
        if not path.exists():
            raise UserInputError(f"{self.folder}: no tree for problem {problem_id!r}")
        return Tree.load(path)

    def export(self, format: str, rule: str | None = None, value: str | None = None, layout: str | None = None,
               **options: Any) -> datasets.Dataset:
        """The rows ``treepref extract`` writes, written the same way (``exports/<format>/``) and returned.
        Settings left None are the recipe's; ``options`` are the format's and its rule's (``min_margin=0.3``)."""
        import datasets

        from treepref.pipeline import extract

        extract(self.folder, cfg=self.config, formats=[format], rule=rule, value=value, layout=layout,
                options=options)
        return datasets.load_from_disk(str(self.folder / "exports" / format / "dataset"))

    def view(self, problem: str | None = None) -> Path:
        """Write ``view.html``, the trees in one self-contained page (``problem`` shown first); its path."""
        from treepref.view import ViewError, write_view

        try:
            return write_view(self.folder, None, problem=problem)
        except ViewError as exc:
            raise UserInputError(str(exc)) from None

    def report(self) -> Path:
        """Write ``report/index.html``, plots of the pairs and trees (numbers in ``report.json``); its path."""
        from treepref.report import ReportError, write_report

        try:
            return write_report(self.folder, None)
        except ReportError as exc:
            raise UserInputError(str(exc)) from None

    def _tree_files(self) -> list[Path]:
        return sorted((self.folder / "trees").glob("*.json"))  # the order of runner.load_trees


def load_run(folder: str | os.PathLike) -> Run:
    """Open a run folder written by ``generate`` (or ``treepref generate``)."""
    from treepref.pipeline import run_config

    return Run(folder, run_config(folder))


def generate(config: ConfigLike, output: str | os.PathLike | None = None, *, overrides: Overrides = None,
             force: bool = False, extract: bool = True, progress: bool = False,
             allow_failures: bool | None = None) -> Run:
    """Run a recipe as ``treepref generate`` does and return its folder.

    ``config``: a YAML file, a mapping shaped like one, or a ``Config``. ``overrides``: ``--set``'s dotted keys,
    as ``{"search.options.simulations": 8}`` or ``["search.options.simulations=8"]``. A rerun resumes; a rerun
    with another recipe raises ``RecipeMismatch`` unless ``force``. Mistakes raise before the folder is touched.

    A problem whose search fails is recorded (``errors.jsonl``, ``run.summary["failures"]``) and logged, and the
    run is returned: a long run is not lost to one bad problem. ``allow_failures=False`` raises
    ``ProblemsFailed`` instead (after everything is written). An interrupt propagates; the trees written stay.
    """
    from treepref import pipeline

    plan = pipeline.prepare(config, output, overrides=overrides, force=force)
    pipeline.start(plan)
    for line in pipeline.notes(plan):
        log.warning(line)
    summary = pipeline.search_problems(plan, progress=progress)
    pipeline.finish(plan, summary, extract=extract)
    run = load_run(plan.out)  # the folder's own recipe, as ``treepref extract`` reads it
    if summary.failed:
        line = pipeline.failures_line(summary, plan.out)
        if allow_failures is False:
            raise ProblemsFailed(line, run)
        if allow_failures is None:
            log.warning(line)
    return run


def train(config: Any, output: str | os.PathLike | None = None, *, overrides: Overrides = None) -> dict:
    """Train on exported data as ``treepref train`` does: step-DPO, Step-APO, TPO, a pairwise verifier, a PRM or a
    PAV.

    ``config``: a training recipe (``configs/train-*.yaml``), a mapping shaped like one, or a ``TrainConfig``;
    its ``data`` is a run folder, an export folder, a ``datasets`` folder, ``.jsonl`` or ``.parquet``.
    ``output`` replaces the recipe's; ``overrides`` as ``generate``'s. The data's columns are checked before a
    model loads. Returns the summary: ``method``, ``examples``, ``steps``, ``train_loss``, ``model`` (the folder
    the trained model was written to, which ``from_pretrained`` and ``evaluator: {kind: prm | pav, model: ...}`` load).
    """
    from treepref import pipeline

    return pipeline.train(config, output, overrides=overrides)


async def search(problems: Iterable[Problem | Mapping | str], *, env: Any, policy: Any, search: str = "mcts",
                 sampling: Mapping[str, Any] | None = None, concurrency: int = 8, **options: Any) -> list[Tree]:
    """Search ``problems`` with a policy you hold (anything with ``backends.base.Policy``'s methods), without a
    recipe or a run folder; the trees come back in the problems' order, annotated as a run's are, so
    ``treepref.extract.export`` takes them. A search that raises raises here (nothing to keep going for).

    ``problems``: ``Problem`` objects, rows as a problems file has them (``{"id", "prompt", "answer"}``) or
    prompts. ``env``: a registered name (built around ``policy``) or an environment object. ``sampling``: the
    recipe's ``sampling`` section (``temperature``, ``top_p``, ``max_tokens``, ``rollout_max_tokens``, ``seed``).
    ``options``: the search's (``simulations=8``); ``concurrency``: searches in flight at once.
    """
    import asyncio

    from treepref.config import SamplingSection, build_section
    from treepref.pipeline import search_context
    from treepref.runner import Retry, search_one
    from treepref.search import build_config, get_search
    from treepref.timeline import Timeline

    where = "treepref.search"
    items = as_problems(problems)
    search_cfg = build_config(search, options, where)
    section = build_section(SamplingSection, dict(sampling or {}), where, "sampling.")
    if isinstance(env, str):
        from treepref.envs import build_env

        env = build_env(env, {}, policy=policy, source=where)
    ctx = search_context(env, policy, section)
    search_fn, timeline, gate = get_search(search), Timeline(), asyncio.Semaphore(max(1, concurrency))

    async def one(problem: Problem) -> Tree:
        async with gate:
            outcome = await search_one(problem, search_fn, search_cfg, ctx, timeline, Retry(retries=0),
                                       raise_errors=True)
        return outcome.tree

    tasks = [asyncio.ensure_future(one(p)) for p in items]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # the first error (or a cancellation of this call) stops the other searches
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    if errors:
        raise errors[0]  # as the search raised it, not wrapped in a group
    return [t.result() for t in tasks]


def as_problems(problems: Iterable[Problem | Mapping | str]) -> list[Problem]:
    """Problems from ``Problem`` objects, rows (checked as a problems file's rows are) or prompts."""
    from treepref.problems import row_to_problem

    if isinstance(problems, (str, Mapping, Problem)):
        problems = [problems]
    out, seen = [], {}
    for line, item in enumerate(problems, start=1):
        if isinstance(item, Problem):
            out.append(item)
            continue
        row = {"prompt": item} if isinstance(item, str) else item
        if not isinstance(row, Mapping):
            raise UserInputError(f"problems:{line}: expected a Problem, a mapping or a prompt, got "
                                 f"{type(item).__name__}")
        made = row_to_problem(dict(row), file="problems", line=line, seen=seen)
        if not isinstance(made, Problem):
            raise UserInputError(str(made[0]) + (f" (and {len(made) - 1} more)" if len(made) > 1 else ""))
        out.append(made)
    return out


__all__ = ["ProblemsFailed", "Run", "as_problems", "generate", "load_run", "search", "train"]
