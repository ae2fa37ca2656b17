"""Run one search over many problems at once, and keep every tree.

Each problem's search is an asyncio task; up to ``concurrency`` are in flight, so the backend always has
many requests to batch. Each finished tree is written atomically to ``trees/<id>.json``; a rerun skips the
problems whose tree exists (resume, nothing duplicated), and a problem whose search fails is recorded in
``errors.jsonl`` and does not stop the others.
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

from treepref.backends.base import Completion, Policy, Sampling
from treepref.few_shot import shots_to_json
from treepref.problems import Problem
from treepref.search.base import SearchContext
from treepref.timeline import Timeline
from treepref.tree import Tree, atomic_write_text

SearchFn = Callable[[Problem, SearchContext, object], Awaitable[Tree]]


class CountingPolicy:
    """Delegates to a shared policy and counts what one problem's search generated."""

    def __init__(self, policy: Policy, timeline: Timeline | None = None) -> None:
        self.inner = policy
        self.requests = 0
        self.generated_tokens = 0
        self.timeline = timeline

    async def generate(self, prompts: Sequence[str], params: Sampling) -> list[list[Completion]]:
        if self.timeline is None:
            out = await self.inner.generate(prompts, params)
        else:
            with self.timeline.generating():
                out = await self.inner.generate(prompts, params)
        self.requests += 1
        self.generated_tokens += sum(c.n_tokens for per_prompt in out for c in per_prompt)
        return out

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.inner.chat_prompt(messages)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def __getattr__(self, name):  # score(), stats, ... of the wrapped backend
        return getattr(self.inner, name)


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
    failures: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tree_path(out_dir: Path, problem_id: str) -> Path:
    """A file name that is safe on any filesystem and unique per id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", problem_id)[:80]
    if safe != problem_id:
        safe += "-" + hashlib.sha1(problem_id.encode()).hexdigest()[:8]
    return out_dir / "trees" / f"{safe}.json"


def load_trees(out_dir: str | Path) -> list[Tree]:
    """Every tree of a run folder, in file-name order."""
    return [Tree.load(p) for p in sorted((Path(out_dir) / "trees").glob("*.json"))]


async def run_problems(problems: Sequence[Problem], search: SearchFn, search_cfg: object, ctx: SearchContext,
                       out_dir: str | Path, *, concurrency: int = 8, resume: bool = True,
                       progress: bool = True, progress_file=None) -> RunSummary:
    """Search every problem, writing each tree as soon as it is done."""
    out_dir = Path(out_dir)
    (out_dir / "trees").mkdir(parents=True, exist_ok=True)
    summary = RunSummary(problems=len(problems))
    start = time.perf_counter()
    todo = []
    for problem in problems:
        path = tree_path(out_dir, problem.id)
        if resume and path.exists():
            summary.resumed += 1
            tree = Tree.load(path)
            summary.nodes += len(tree)
            summary.generated_tokens += tree.meta.get("generated_tokens", 0)
        else:
            todo.append(problem)

    bar = _progress(len(todo), progress, progress_file)
    timeline = ctx.timeline or Timeline()
    gate = asyncio.Semaphore(concurrency)

    async def one(problem: Problem) -> None:
        async with gate:
            counter = CountingPolicy(ctx.policy, timeline)
            local = dataclasses.replace(ctx, policy=counter, timeline=timeline)
            t0 = time.perf_counter()
            try:
                tree = await search(problem, local, search_cfg)
            except Exception as exc:  # one bad problem never kills the run
                summary.failed += 1
                record = {"problem_id": problem.id, "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc(limit=5)}
                summary.failures.append(record["error"])
                with open(out_dir / "errors.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            else:
                # The search helpers count what they generate into the same keys; the runner's count is kept
                # because it also sees policy calls made outside them (judges, self-evaluation).
                tree.meta.update(generated_tokens=counter.generated_tokens, policy_requests=counter.requests,
                                 wall_time_s=round(time.perf_counter() - t0, 3))
                # Which environment, and how it was set up (the tree itself records the text it rendered).
                tree.meta.setdefault("env", getattr(ctx.env, "name", type(ctx.env).__name__))
                for key in ("system", "delimiter"):
                    if hasattr(ctx.env, key):
                        tree.meta.setdefault(key, getattr(ctx.env, key))
                if getattr(ctx.env, "few_shot", ()):
                    tree.meta.setdefault("few_shot", shots_to_json(ctx.env.few_shot))
                if problem.meta:  # what a domain's checker needs (arithmetic: the expression, intermediates)
                    tree.meta.setdefault("problem_meta", problem.meta)
                tree.save(tree_path(out_dir, problem.id))
                summary.searched += 1
                summary.nodes += len(tree)
            summary.generated_tokens += counter.generated_tokens
            summary.requests += counter.requests
            if bar is not None:
                bar.update(1)
                rate = summary.generated_tokens / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(nodes=summary.nodes, tokens=summary.generated_tokens, tok_s=round(rate),
                                failed=summary.failed)

    try:
        await asyncio.gather(*(one(p) for p in todo))
    finally:
        if bar is not None:
            bar.close()
    summary.wall_time_s = round(time.perf_counter() - start, 3)
    overlap = timeline.summary()
    summary.evaluator_s, summary.evaluator_overlap = overlap["evaluator_s"], overlap["evaluator_overlap"]
    return summary


def _progress(total: int, enabled: bool, file=None):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="problems", unit="problem", file=file)


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
