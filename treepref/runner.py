"""Run one search over many problems at once, and keep every tree.

Each problem's search is an asyncio task; up to ``concurrency`` are in flight, so the backend always has
many requests to batch. Each finished tree is written atomically to ``trees/<id>.json``; a rerun skips the
problems whose tree exists (resume, nothing duplicated).

A failure belongs to its problem: a prompt that does not fit the model's context is refused before it is
sent (problem id and token count in the message), a policy request that fails is retried with backoff
(``Retry``), and a problem whose search still fails is recorded in ``errors.jsonl`` with the reason while
the other searches go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from treepref.backends.base import Completion, ContextLengthError, Policy, Sampling
from treepref.few_shot import shots_to_json
from treepref.problems import Problem
from treepref.search.base import SearchContext
from treepref.search.checkpoint import Checkpoint
from treepref.timeline import Timeline
from treepref.tree import Tree, atomic_write_text

SearchFn = Callable[[Problem, SearchContext, object], Awaitable[Tree]]


@dataclass(frozen=True)
class Retry:
    """How a failed policy request is retried before its problem is given up: ``retries`` more tries, the
    n-th after ``backoff_s * 2**(n-1)`` seconds; ``timeout_s`` bounds one try (queueing in the backend's
    batcher included); None waits as long as it takes."""

    retries: int = 2
    backoff_s: float = 1.0
    timeout_s: float | None = None


def retryable(exc: BaseException) -> bool:
    """Whether trying the same request again may help: not for bad input (a ``ValueError`` or ``TypeError``,
    e.g. a prompt too long) nor for an error its backend marks ``retryable = False`` (one that already
    retried, like the openai backend); yes for the rest (an engine hiccup, a timeout, a dropped connection)."""
    marked = getattr(exc, "retryable", None)
    if marked is not None:
        return bool(marked)
    return not isinstance(exc, (ValueError, TypeError))


class CountingPolicy:
    """Delegates to a shared policy for one problem's search: counts what it generated, refuses a prompt
    that cannot fit the model's context, and retries failed requests (``Retry``)."""

    def __init__(self, policy: Policy, timeline: Timeline | None = None, *, problem_id: str | None = None,
                 retry: Retry | None = None) -> None:
        self.inner = policy
        self.requests = 0
        self.generated_tokens = 0
        self.timeline = timeline
        self.problem_id = problem_id
        self.retry = retry or Retry(retries=0)
        self.retried = 0  # failed tries that were tried again
        self.gave_up: list[BaseException] = []  # the errors of requests that failed for good

    async def generate(self, prompts: Sequence[str], params: Sampling) -> list[list[Completion]]:
        self._check_fits(prompts)
        for attempt in range(self.retry.retries + 1):
            try:
                out = await self._once(prompts, params)
                break
            except Exception as exc:
                if attempt == self.retry.retries or not retryable(exc):
                    self.gave_up.append(exc)
                    raise
                self.retried += 1
                await asyncio.sleep(self.retry.backoff_s * 2 ** attempt)
        self.requests += 1
        self.generated_tokens += sum(c.n_tokens for per_prompt in out for c in per_prompt)
        return out

    async def _once(self, prompts, params: Sampling) -> list[list[Completion]]:
        call = self.inner.generate(prompts, params)
        if self.retry.timeout_s is not None:
            call = _timed(call, self.retry.timeout_s)
        if self.timeline is None:
            return await call
        with self.timeline.generating():
            return await call

    def _check_fits(self, prompts) -> None:
        """A prompt of the model's context length or more is refused here, before the backend sees it, with
        the problem id and the token count (vLLM would fail it with neither)."""
        limit = getattr(self.inner, "max_context", None)
        if limit is None:
            return
        for prompt in prompts:
            n = len(self.inner.encode(prompt)) if isinstance(prompt, str) else len(prompt)
            if n >= limit:
                raise ContextLengthError(f"problem {self.problem_id}: its prompt of {n} tokens does not fit the "
                                         f"model's context of {limit} tokens", n, limit)

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.inner.chat_prompt(messages)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def __getattr__(self, name):  # score(), stats, ... of the wrapped backend
        return getattr(self.inner, name)


async def _timed(call, timeout_s: float):
    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        raise TimeoutError(f"a policy request took over {timeout_s:g} s") from None


def failure_reason(exc: BaseException, counter: CountingPolicy) -> str:
    """Why a problem failed, in one word: ``context_length``, ``timeout`` or ``backend`` (a policy request
    that failed for good), or ``search`` (anything else its search raised)."""
    if isinstance(exc, ContextLengthError):
        return "context_length"
    if any(exc is e for e in counter.gave_up):  # (searches with parallel workers may have several)
        return "timeout" if isinstance(exc, TimeoutError) else "backend"
    return "search"


@dataclass
class RunSummary:
    problems: int = 0
    searched: int = 0
    resumed: int = 0  # trees found from an earlier run and kept
    failed: int = 0
    nodes: int = 0
    generated_tokens: int = 0
    requests: int = 0
    wall_time_s: float = 0.0
    evaluator_s: float = 0.0  # time evaluators (PRM, judge, self-eval, ...) were busy
    evaluator_overlap: float | None = None  # the share of it during which a generation was in flight
    failures: list = field(default_factory=list)  # {problem_id, reason, error} of each failed problem
    retries: int = 0  # failed policy requests that were tried again

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tree_path(out_dir: Path, problem_id: str) -> Path:
    """A file name that is safe on any filesystem and unique per id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", problem_id)[:80]
    if safe != problem_id:
        safe += "-" + hashlib.sha1(problem_id.encode()).hexdigest()[:8]
    return out_dir / "trees" / f"{safe}.json"


def checkpoint_path(out_dir: Path, problem_id: str) -> Path:
    """Where a long search on ``problem_id`` saves itself mid-way (``search.checkpoint``)."""
    return out_dir / "checkpoints" / (tree_path(out_dir, problem_id).stem + ".pkl")


def load_trees(out_dir: str | Path) -> list[Tree]:
    """Every tree of a run folder, in file-name order."""
    return [Tree.load(p) for p in sorted((Path(out_dir) / "trees").glob("*.json"))]


def pending(problems: Sequence[Problem], out_dir: str | Path) -> list[Problem]:
    """The problems whose tree is not written yet (all of them are done when this is empty)."""
    return [p for p in problems if not tree_path(Path(out_dir), p.id).exists()]


@dataclass
class Outcome:
    """What one problem's search left: its tree (annotated, not yet written) or its failure record, and what
    it cost. Picklable, so a search run elsewhere (a Ray actor) hands back the same thing."""

    problem_id: str
    tree: Tree | None = None
    failure: dict | None = None  # {problem_id, reason, error, retries, traceback}
    generated_tokens: int = 0
    requests: int = 0
    retried: int = 0


def start_summary(problems: Sequence[Problem], out_dir: Path, resume: bool) -> tuple[RunSummary, list[Problem]]:
    """The summary with the trees already written counted as resumed, and the problems left to search."""
    (out_dir / "trees").mkdir(parents=True, exist_ok=True)
    summary, todo = RunSummary(problems=len(problems)), []
    for problem in problems:
        path = tree_path(out_dir, problem.id)
        if resume and path.exists():
            summary.resumed += 1
            tree = Tree.load(path)
            summary.nodes += len(tree)
            summary.generated_tokens += tree.meta.get("generated_tokens", 0)
        else:
            todo.append(problem)
    return summary, todo


async def search_one(problem: Problem, search: SearchFn, search_cfg: object, ctx: SearchContext,
                     timeline: Timeline, retry: Retry, checkpoint: Checkpoint | None = None, *,
                     raise_errors: bool = False) -> Outcome:
    """One problem's search on the shared ``ctx``; whatever it raises becomes its failure record, so one bad
    problem never kills the run. ``checkpoint``: where a search that checkpoints saves itself (and resumes).
    ``raise_errors``: let the exception through instead (``treepref.search``: no run to keep going)."""
    counter = CountingPolicy(ctx.policy, timeline, problem_id=problem.id, retry=retry)
    local = dataclasses.replace(ctx, policy=counter, timeline=timeline, checkpoint=checkpoint)
    t0 = time.perf_counter()
    out = Outcome(problem.id)
    try:
        tree = await search(problem, local, search_cfg)
    except Exception as exc:
        if raise_errors:
            raise
        out.failure = {"problem_id": problem.id, "reason": failure_reason(exc, counter),
                       "error": f"{type(exc).__name__}: {exc}", "retries": counter.retried,
                       "traceback": traceback.format_exc(limit=5)}
    else:
        # The search helpers count what they generate into the same keys; the runner's count is kept
        # because it also sees policy calls made outside them (judges, self-evaluation).
        before = (checkpoint.tokens_before, checkpoint.requests_before) if checkpoint is not None else (0, 0)
        tree.meta.update(generated_tokens=counter.generated_tokens + before[0],
                         policy_requests=counter.requests + before[1], wall_time_s=round(time.perf_counter() - t0, 3))
        # Which environment, and how it was set up (the tree itself records the text it rendered).
        tree.meta.setdefault("env", getattr(ctx.env, "name", type(ctx.env).__name__))
        for key in ("system", "delimiter"):
            if hasattr(ctx.env, key):
                tree.meta.setdefault(key, getattr(ctx.env, key))
        if getattr(ctx.env, "few_shot", ()):
            tree.meta.setdefault("few_shot", shots_to_json(ctx.env.few_shot))
        if problem.meta:  # what a domain's checker needs (arithmetic: the expression, intermediates)
            tree.meta.setdefault("problem_meta", problem.meta)
        out.tree = tree
    out.generated_tokens, out.requests, out.retried = counter.generated_tokens, counter.requests, counter.retried
    return out


def record(outcome: Outcome, summary: RunSummary, out_dir: Path) -> None:
    """Write a finished tree atomically, or append the failure to ``errors.jsonl``; count it in ``summary``."""
    if outcome.failure is not None:
        summary.failed += 1
        summary.failures.append({k: outcome.failure[k] for k in ("problem_id", "reason", "error")})
        with open(out_dir / "errors.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(outcome.failure) + "\n")
    else:
        outcome.tree.save(tree_path(out_dir, outcome.problem_id))
        checkpoint_path(out_dir, outcome.problem_id).unlink(missing_ok=True)  # the tree supersedes it
        summary.searched += 1
        summary.nodes += len(outcome.tree)
    summary.generated_tokens += outcome.generated_tokens
    summary.requests += outcome.requests
    summary.retries += outcome.retried


async def run_problems(problems: Sequence[Problem], search: SearchFn, search_cfg: object,
                       ctx: SearchContext | None, out_dir: str | Path, *, concurrency: int = 8, resume: bool = True,
                       retry: Retry = Retry(), progress: bool = True, progress_file=None,
                       share_budget: bool = False) -> RunSummary:
    """Search every problem, writing each tree as soon as it is done. ``ctx`` may be None when every tree
    is already written (a finished run needs no policy). ``share_budget``: the searches share one
    ``TokenPool``, so the token budget a tree leaves unspent goes to trees that can still use it."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    summary, todo = start_summary(problems, out_dir, resume)
    if not todo:
        summary.wall_time_s = round(time.perf_counter() - start, 3)
        return summary
    if ctx is None:
        raise ValueError(f"run_problems: {len(todo)} problems to search and no SearchContext")

    bar = _progress(len(todo), progress, progress_file)
    timeline = ctx.timeline or Timeline()
    gate = asyncio.Semaphore(concurrency)
    if share_budget:
        from treepref.search.spend import TokenPool

        ctx = dataclasses.replace(ctx, pool=TokenPool())

    async def one(problem: Problem) -> None:
        async with gate:
            checkpoint = Checkpoint(checkpoint_path(out_dir, problem.id), resume=resume)
            if ctx.pool is not None:
                ctx.pool.open()  # inside the gate: only a running search can deposit
            try:
                outcome = await search_one(problem, search, search_cfg, ctx, timeline, retry, checkpoint)
            finally:
                if ctx.pool is not None:
                    await ctx.pool.close()
            record(outcome, summary, out_dir)
            update_progress(bar, summary, start)

    try:
        await asyncio.gather(*(one(p) for p in todo))
    finally:
        if bar is not None:
            bar.close()
    summary.wall_time_s = round(time.perf_counter() - start, 3)
    overlap = timeline.summary()
    summary.evaluator_s, summary.evaluator_overlap = overlap["evaluator_s"], overlap["evaluator_overlap"]
    return summary


def update_progress(bar, summary: RunSummary, start: float) -> None:
    if bar is not None:
        bar.update(1)
        rate = summary.generated_tokens / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(nodes=summary.nodes, tokens=summary.generated_tokens, tok_s=round(rate),
                        failed=summary.failed)


def _progress(total: int, enabled: bool, file=None):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="problems", unit="problem", file=file)


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
