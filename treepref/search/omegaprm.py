"""OmegaPRM's binary search for the first wrong step of a solution.

Monte Carlo values along a solution are (assumed) monotone: once a prefix cannot reach the answer any
more (MC = 0, no completion correct), no longer prefix can. So with v_k the MC value of the prefix ending
at step k (k = 1..T), the first error is e = min{k : v_k = 0}, and

  v_mid = 0  =>  e <= mid   (search the left half, mid included)
  v_mid > 0  =>  e >  mid   (steps 1..mid are positive)

Starting from lo = 1, hi = T (v_T is the final answer's exact reward, free), the search needs about
ceil(log2 T) MC estimates instead of the T that Math-Shepherd spends. A correct final answer means no
error and costs nothing. Counts already on a node (an earlier search's rollouts) are reused.

Labels go into ``scores["omegaprm"]``: 1.0 for steps before the first error, 0.0 for it and every step
after; steps the budget left undecided get no label.
"""

from __future__ import annotations

from dataclasses import dataclass

from treepref.envs.base import State
from treepref.search import Search
from treepref.search.base import SearchContext
from treepref.tree import Tree
from treepref.search.math_shepherd import mc_value

SCORE_KEY = "omegaprm"


@dataclass(frozen=True)
class OmegaResult:
    first_error: int | None  # index into the path (0-based); None when no error or undecided
    labels: list[bool | None]  # per step of the path; None = undecided (budget ran out)
    rollouts: int  # completions sampled by this call
    evaluations: int  # MC estimates computed by this call (each costs ``n`` rollouts)
    complete: bool  # the search finished within the budget


async def find_first_error(tree: Tree, states: dict[int, State], path: list[int], ctx: SearchContext, *,
                           n: int = 8, budget: int | None = None, truncated_reward: float = 0.0) -> OmegaResult:
    """Binary-search ``path`` (node ids, root excluded) for its first step with MC value 0.

    ``budget``: the most rollouts this call may sample (an estimate is only started if all ``n`` fit).
    """
    t = len(path)
    if t == 0:
        return OmegaResult(None, [], 0, 0, True)
    used, evals = 0, 0

    async def value(k: int) -> float | None:  # k is 1-based; None when the budget forbids sampling
        nonlocal used, evals
        node = path[k - 1]
        sample = 0
        if tree.mc_total[node] == 0 and not tree.is_final(node):
            if budget is not None and used + n > budget:
                return None
            sample, used, evals = n, used + n, evals + 1
        v = await mc_value(tree, states, node, ctx, sample, truncated_reward=truncated_reward)
        return v.soft

    lo, hi = 1, t
    v_last = await value(t)
    if v_last is None:
        return _finish(tree, path, None, 0, t + 1, used, evals, False)
    if v_last > 0:
        return _finish(tree, path, None, t, t + 1, used, evals, True)  # no error: every step positive
    complete = True
    while lo < hi:
        mid = (lo + hi) // 2
        v = await value(mid)
        if v is None:
            complete = False
            break
        if v == 0:
            hi = mid
        else:
            lo = mid + 1
    if complete:
        return _finish(tree, path, lo - 1, lo - 1, lo, used, evals, True)
    return _finish(tree, path, None, lo - 1, hi, used, evals, False)


def _finish(tree: Tree, path: list[int], first_error: int | None, n_pos: int, first_neg: int, used: int,
            evals: int, complete: bool) -> OmegaResult:
    """Steps 1..n_pos positive, steps first_neg..T negative (1-based), the rest undecided."""
    labels: list[bool | None] = []
    for k, node in enumerate(path, start=1):
        label = True if k <= n_pos else False if k >= first_neg else None
        labels.append(label)
        if label is not None:
            tree.scores[node][SCORE_KEY] = float(label)
    return OmegaResult(first_error, labels, used, evals, complete)


@dataclass
class OmegaPRMConfig:
    """Settings of :func:`omegaprm` (the ``omegaprm`` recipe's search)."""

    solutions: int = 4
    """Whole solutions sampled from the root; each one's first error is searched for."""
    n: int = 8
    """Completions per MC estimate."""
    budget: int | None = 32
    """Most rollouts per solution (None: unlimited)."""
    truncated_reward: float = 0.0

    def __post_init__(self) -> None:
        if self.solutions < 1 or self.n < 1 or (self.budget is not None and self.budget < 0):
            raise ValueError(f"OmegaPRMConfig needs solutions >= 1, n >= 1, budget >= 0, got {self}")


async def omegaprm(problem, ctx: SearchContext, cfg: OmegaPRMConfig | None = None) -> Tree:
    """Sample solutions and binary-search each for its first error (``async (problem, ctx, cfg) -> Tree``).

    Solutions are searched one after another so later ones reuse the estimates of shared prefixes.
    """
    from dataclasses import asdict

    from treepref.search.sample import SampleConfig, sample
    from treepref.tree import STEP
    from treepref.search.math_shepherd import rebuild_states

    cfg = cfg or OmegaPRMConfig()
    tree = await sample(problem, ctx, SampleConfig(n=cfg.solutions, truncated_reward=cfg.truncated_reward))
    kids = tree.children_map()
    leaves = [i for i in tree.nodes(STEP) if i != 0 and not any(tree.kind[c] == STEP for c in kids[i])]
    states = await rebuild_states(tree, problem, ctx, leaves)
    results = [await find_first_error(tree, states, tree.path(leaf), ctx, n=cfg.n, budget=cfg.budget,
                                      truncated_reward=cfg.truncated_reward) for leaf in leaves]
    tree.meta.update(search="omegaprm", settings=asdict(cfg))
    tree.meta.setdefault("stats", {}).update(
        omegaprm_rollouts=sum(r.rollouts for r in results),
        first_errors=[None if r.first_error is None else tree.path(leaf)[r.first_error]
                      for leaf, r in zip(leaves, results)])
    return tree


SEARCH = Search(omegaprm, OmegaPRMConfig)  # what treepref.search registers as "omegaprm"
