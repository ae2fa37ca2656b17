"""Ray executor: problems sharded over Ray actors, each holding one policy and running many searches at once.

Each actor (``SearchWorker``) builds its own ``SearchContext`` (its own backend: one vLLM engine per GPU, placed
by Ray through ``num_gpus`` and, optionally, a placement group) from a picklable zero-argument factory, and runs
``runner.search_one`` coroutines on its own event loop (an async actor; ``run.concurrency`` searches in flight
per actor). A problem's whole search runs on one actor, so its prefix cache serves every request of the tree.

The driver (``run_problems_ray``) sends the next problem to the live actor with the fewest in flight, waits with
``ray.wait``, and writes each returned tree itself with the local runner's ``record`` (atomic ``trees/<id>.json``,
``errors.jsonl``, the same ``RunSummary``), so resume, failure records and exports are the local runner's. A
search that raises is recorded by the actor exactly as the local runner records it. An actor that dies (killed,
out of memory, its node lost) takes only its in-flight problems with it: each is sent to another actor (a
replacement is started in the dead one's place while ``max_replacements`` allow), at most ``actor_retries``
times, then recorded in ``errors.jsonl`` with reason ``actor``; a problem that kills every actor it meets is
therefore failed, not retried forever.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from treepref.config import Config, RaySection
from treepref.executors import ExecutorError, require_ray
from treepref.problems import Problem
from treepref.runner import (Outcome, Retry, RunSummary, _progress, checkpoint_path, record, search_one,
                             start_summary, update_progress)
from treepref.search.checkpoint import Checkpoint
from treepref.search.base import SearchContext
from treepref.timeline import Timeline

ContextFactory = Callable[[], SearchContext]


class RayExecutorError(ExecutorError):
    """The run cannot go on: no cluster to connect to, or actors that cannot start (one line)."""


@dataclass
class RaySummary(RunSummary):
    """The local runner's summary, plus what the actors did."""

    executor: str = "ray"
    actors: int = 0  # actors started, replacements included
    actor_deaths: int = 0
    resubmitted: list = field(default_factory=list)  # problem ids sent again after their actor died
    per_actor: dict = field(default_factory=dict)  # actor name -> problems it finished (trees or failures)


@dataclass
class ConfigContext:
    """The factory ``generate`` sends to the actors: the resolved recipe, from which each actor builds its own
    backend and environment exactly as the local runner's context is built."""

    cfg: Config

    def __call__(self) -> SearchContext:
        from treepref.backends import make_policy
        from treepref.context import build_context

        policy = make_policy(self.cfg.model.backend, self.cfg.model.name, **self.cfg.model.options)
        return build_context(self.cfg, policy)


class SearchWorker:
    """One policy and many searches (the body of the Ray actor). The context is built on the actor's event
    loop on first use, because a vLLM engine binds to the loop that first uses it."""

    def __init__(self, build: ContextFactory, search, search_cfg: object, retry: Retry) -> None:
        self.build, self.search, self.search_cfg, self.retry = build, search, search_cfg, retry
        self.ctx: SearchContext | None = None
        self.timeline = Timeline()
        self._lock: asyncio.Lock | None = None

    async def start(self) -> dict:
        """Build the context (once) and say where this actor runs."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.ctx is None:
                if isinstance(self.search, str):
                    from treepref.search import get_search

                    self.search = get_search(self.search)
                self.ctx = self.build()
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    async def run(self, problem: Problem, checkpoint: Checkpoint | None = None) -> Outcome:
        await self.start()
        return await search_one(problem, self.search, self.search_cfg, self.ctx, self.timeline, self.retry,
                                checkpoint)

    async def timeline_summary(self) -> dict:
        return self.timeline.summary()

    async def close(self) -> None:
        close = getattr(getattr(self.ctx, "policy", None), "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result


@dataclass
class _Slot:
    """A place for one actor (a placement-group bundle when there is one); a dead actor's replacement takes
    its slot."""

    index: int
    actor: object = None
    name: str = ""
    alive: bool = False
    in_flight: int = 0
    ready: bool = False  # its actor has built its policy (only then does it get problems)
    starting: object = None  # a replacement's start call, until it has built its policy
    since: float = 0.0  # when that replacement was launched


def run_problems_ray(problems: Sequence[Problem], search, search_cfg: object, build: ContextFactory,
                     out_dir: str | Path, *, options: RaySection = RaySection(), concurrency: int = 8,
                     resume: bool = True, retry: Retry = Retry(), progress: bool = True,
                     progress_file=None) -> RaySummary:
    """Search every problem on Ray actors; the run folder is written as ``runner.run_problems`` writes it.

    ``search`` is a search name or function, ``build`` a picklable zero-argument factory of the actors'
    ``SearchContext``; ``concurrency`` is searches in flight per actor. Uses the Ray of this process when one
    is initialised, else connects to ``options.address`` (None: starts a local one, shut down afterwards).
    """
    out_dir = Path(out_dir)
    start = time.perf_counter()
    base, todo = start_summary(problems, out_dir, resume)
    summary = RaySummary(**vars(base))
    if not todo:  # a finished run starts no cluster and loads no model
        summary.wall_time_s = round(time.perf_counter() - start, 3)
        return summary
    ray = require_ray()
    started_ray = not ray.is_initialized()
    if started_ray:
        _init(ray, options)
    pool = _Pool(ray, options, build, search, search_cfg, retry, concurrency, summary)
    bar = _progress(len(todo), progress, progress_file)
    try:
        # Mid-search checkpoints go to RUN/checkpoints/, which the actors can reach only on the driver's machine.
        pool.checkpoints = (out_dir, resume) if _one_machine(ray) else None
        pool.start()
        _dispatch(pool, deque((p, 0) for p in todo), summary, out_dir, bar, start)
        _merge_timelines(pool, summary)
    finally:
        if bar is not None:
            bar.close()
        pool.stop()
        if started_ray:
            ray.shutdown()
    summary.wall_time_s = round(time.perf_counter() - start, 3)
    return summary


def _init(ray, options: RaySection) -> None:
    """Start (or join) Ray for this run, keeping this process's SIGTERM handler: ``ray.init`` replaces it with
    one that aborts the process (exit -6, no cleanup), so ``generate``'s SIGTERM-as-Ctrl-C would be lost."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        # "local": a fresh Ray for this run, even where `ray start` left a cluster (or a stale record of one)
        ray.init(address=options.address or "local", include_dashboard=False, log_to_driver=options.log_to_driver)
    except (ConnectionError, RuntimeError) as exc:  # a token the cluster refuses, a cluster that went away, ...
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        last = str(root).strip().splitlines()[-1:] or [""]  # Ray puts the real error on the last line
        raise RayExecutorError(f"ray executor: cannot connect to the Ray cluster at {options.address}: "
                               f"{_cause(exc)}; {last[0][:240]}") from None
    if main and previous is not None:
        signal.signal(signal.SIGTERM, previous)


class _Pool:
    """The actors of one run: start, replace and stop them."""

    def __init__(self, ray, options: RaySection, build, search, search_cfg, retry, concurrency, summary):
        self.ray, self.options, self.summary = ray, options, summary
        self.args = (build, search, search_cfg, retry)
        self.concurrency = concurrency
        self.run_id = uuid.uuid4().hex[:8]
        self.replacements = options.max_replacements if options.max_replacements is not None else 2 * options.actors
        self.group = None
        self.checkpoints: tuple | None = None  # (run folder, resume) where actors share the driver's disk
        self.slots = [_Slot(i) for i in range(options.actors)]
        self.cls = ray.remote(SearchWorker)

    def start(self) -> None:
        """Start every actor and wait until each has built its policy: a model that cannot load, or a cluster
        without the resources asked for, is one clear error before any problem is sent."""
        ray, o = self.ray, self.options
        if o.placement is not None:
            from ray.util.placement_group import placement_group

            bundle = {"CPU": o.num_cpus, **({"GPU": o.num_gpus} if o.num_gpus else {})}
            self.group = placement_group([bundle] * o.actors, strategy=o.placement)
            try:
                ray.get(self.group.ready(), timeout=o.start_timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise RayExecutorError(self._no_room(f"a {o.placement} placement group of {o.actors} x {bundle}")) from None
        for slot in self.slots:
            self.launch(slot)
        refs = {slot.actor.start.remote(): slot for slot in self.slots}
        try:
            ray.get(list(refs), timeout=o.start_timeout_s)
            for slot in self.slots:
                slot.ready = True
        except ray.exceptions.GetTimeoutError:
            raise RayExecutorError(self._no_room(f"{o.actors} actors of {o.num_cpus:g} CPU, {o.num_gpus:g} GPU")) from None
        except ray.exceptions.RayError as exc:
            raise RayExecutorError(f"ray executor: an actor could not build its policy: {_cause(exc)}") from None

    def _no_room(self, what: str) -> str:
        return (f"ray executor: {what} not started within {self.options.start_timeout_s:g} s; the cluster has "
                f"{self.ray.cluster_resources()} (lower run.ray.actors / num_gpus / num_cpus, or add nodes)")

    def launch(self, slot: _Slot) -> None:
        o = self.options
        slot.name = f"treepref-{self.run_id}-{slot.index}-{self.summary.actors}"
        opts = dict(num_cpus=o.num_cpus, num_gpus=o.num_gpus, name=slot.name,
                    max_concurrency=self.concurrency + 4)  # + the start, timeline and close calls
        if self.group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=slot.index)
        slot.actor = self.cls.options(**opts).remote(*self.args)
        slot.alive, slot.ready, slot.in_flight = True, False, 0
        self.summary.actors += 1
        self.summary.per_actor.setdefault(slot.name, 0)

    def died(self, slot: _Slot) -> None:
        """Count a dead actor once, and start its replacement in the same slot while replacements are left."""
        if not slot.alive:
            return
        slot.alive = False
        self.summary.actor_deaths += 1
        self.ray.kill(slot.actor, no_restart=True)  # an actor that misbehaved but lives is stopped too
        if self.replacements > 0:
            self.replacements -= 1
            self.launch(slot)
            slot.starting, slot.since = slot.actor.start.remote(), time.monotonic()

    def poll_starting(self) -> None:
        """A replacement gets problems only once it has built its policy, so none waits on an actor that
        cannot start. One whose start fails, or that finds no room within ``start_timeout_s`` (its node gone,
        the cluster full), is given up and not replaced again."""
        for slot in self.slots:
            if slot.starting is None:
                continue
            ready, _ = self.ray.wait([slot.starting], timeout=0)
            if ready:
                try:
                    self.ray.get(slot.starting)
                    slot.starting, slot.ready = None, True
                    continue
                except self.ray.exceptions.RayError:
                    pass
            elif time.monotonic() - slot.since < self.options.start_timeout_s:
                continue
            slot.alive, slot.starting = False, None
            self.summary.actor_deaths += 1
            self.ray.kill(slot.actor, no_restart=True)

    def starting(self) -> list:
        return [s.starting for s in self.slots if s.starting is not None]

    def ready(self) -> list:
        """The actors that are alive and have built their policies."""
        return [s.actor for s in self.slots if s.alive and s.ready]

    def free(self) -> _Slot | None:
        """The live actor with the fewest searches in flight, if any has room (load-aware dispatch)."""
        room = [s for s in self.slots if s.alive and s.ready and s.in_flight < self.concurrency]
        return min(room, key=lambda s: (s.in_flight, s.index)) if room else None

    def stop(self) -> None:
        ready = self.ready()
        if ready:  # let backends shut their engines down, then stop the actors
            try:
                self.ray.get([a.close.remote() for a in ready], timeout=60)
            except Exception:
                pass
        for slot in self.slots:
            if slot.alive:
                self.ray.kill(slot.actor, no_restart=True)
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)


def _dispatch(pool: _Pool, queue: deque, summary: RaySummary, out_dir: Path, bar, start: float) -> None:
    """Keep every live actor busy, write each result as it arrives, and resend what a dead actor held."""
    ray = pool.ray
    in_flight: dict = {}  # ref -> (slot, the actor it was sent to, its name, problem, deaths so far)
    while queue or in_flight:
        pool.poll_starting()
        while queue and (slot := pool.free()) is not None:
            problem, deaths = queue.popleft()
            ckpt = None if pool.checkpoints is None else Checkpoint(checkpoint_path(out_dir, problem.id),
                                                                    resume=pool.checkpoints[1])
            in_flight[slot.actor.run.remote(problem, ckpt)] = (slot, slot.actor, slot.name, problem, deaths)
            slot.in_flight += 1
        starting = pool.starting()
        if not in_flight and not starting:  # problems left, no live actor and no replacement coming
            for problem, deaths in queue:
                _fail(problem, deaths, "no live actor left to search it", summary, out_dir)
                update_progress(bar, summary, start)
            return
        done, _ = ray.wait(list(in_flight) + starting, num_returns=1, timeout=1.0)
        for ref in done:
            if ref not in in_flight:  # a replacement has started: it gets problems on the next round
                continue
            slot, actor, name, problem, deaths = in_flight.pop(ref)
            same = slot.actor is actor  # not a result of the actor this slot had before a replacement
            if same:
                slot.in_flight -= 1
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the actor died (or failed outside the search)
                if same:
                    pool.died(slot)
                if deaths + 1 > pool.options.actor_retries:
                    _fail(problem, deaths + 1, _cause(exc), summary, out_dir)
                    update_progress(bar, summary, start)
                else:
                    summary.resubmitted.append(problem.id)
                    queue.appendleft((problem, deaths + 1))
                continue
            record(outcome, summary, out_dir)
            summary.per_actor[name] += 1
            update_progress(bar, summary, start)


def _one_machine(ray) -> bool:
    """Whether every node of the cluster is the driver's machine (so actors share its disk)."""
    here = ray.util.get_node_ip_address()
    return all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive"))


def _fail(problem: Problem, deaths: int, error: str, summary: RunSummary, out_dir: Path) -> None:
    failure = {"problem_id": problem.id, "reason": "actor", "error": error, "retries": deaths, "traceback": ""}
    record(Outcome(problem.id, failure=failure), summary, out_dir)


def _cause(exc: BaseException) -> str:
    """One line for a Ray error, which is otherwise a page of traceback: the exception raised in the actor
    (a ``RayTaskError`` carries it as ``cause``), else the error's first line (an actor's death)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _merge_timelines(pool: _Pool, summary: RunSummary) -> None:
    """Evaluator time over the live actors (summed) and its overlap with generation (weighted by that time)."""
    try:
        parts = pool.ray.get([a.timeline_summary.remote() for a in pool.ready()], timeout=60)
    except Exception:
        return
    busy = sum(p["evaluator_s"] for p in parts)
    summary.evaluator_s = round(busy, 3)
    if busy:
        summary.evaluator_overlap = round(sum(p["evaluator_s"] * (p["evaluator_overlap"] or 0) for p in parts) / busy, 3)


def run_config(cfg: Config, problems: Sequence[Problem], out: Path, *, progress: bool = True,
               progress_file=None) -> RaySummary:
    """``generate`` with ``run.executor: ray``: the recipe's search on actors built from the recipe."""
    from treepref.search import build_config

    retry = Retry(cfg.run.retries, cfg.run.retry_backoff_s, cfg.run.request_timeout_s)
    return run_problems_ray(problems, cfg.search.name, build_config(cfg.search.name, cfg.search.options, cfg.source),
                            ConfigContext(cfg), out, options=cfg.run.ray, concurrency=cfg.run.concurrency,
                            resume=cfg.run.resume, retry=retry, progress=progress, progress_file=progress_file)
