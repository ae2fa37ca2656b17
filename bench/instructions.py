"""The policy as judge and refiner on checkable instructions (SPaR), scored against the exact checker.

Runs the refinement search (``search/refine.py``) on the built-in instructions domain, where every
constraint of every prompt has an exact checker (``domains/instructions.py``), and reports:

* the judge's agreement with the checker over every judged response (verdict: the share of "yes" critiques
  above 0.5; truth: every constraint holds), with the base rate and the agreement of always saying "no";
* the refine pairs (``refine_pairs``: a refinement against the response it refines) whose chosen side
  satisfies more constraints than the rejected side, as many, or fewer — over ALL pairs.

    python bench/instructions.py --problems 16              # writes bench/results/instructions.{json,md}

The embedded SmolLM2-135M is a weak judge; the numbers say how weak, honestly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treepref.backends import make_policy  # noqa: E402
from treepref.backends.base import Sampling  # noqa: E402
from treepref.domains.instructions import check, generate  # noqa: E402
from treepref.envs import build_env  # noqa: E402
from treepref.extract import export  # noqa: E402
from treepref.runner import load_trees, run_problems  # noqa: E402
from treepref.search.base import SearchContext  # noqa: E402
from treepref.search.refine import RefineConfig, refine  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def judge_agreement(trees, problems) -> dict:
    """Every judged response: the judge's verdict against the exact checker."""
    counts = {"judged": 0, "tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for tree in trees:
        problem = problems[tree.problem_id]
        for n in range(1, len(tree)):
            if "judge" not in tree.scores[n]:
                continue
            said = tree.scores[n]["judge"] > 0.5
            truth = all(check(problem, tree.rendered[n] or tree.text[n]))
            counts["judged"] += 1
            counts[("t" if said == truth else "f") + ("p" if said else "n")] += 1
    n = counts["judged"]
    counts["agreement"] = (counts["tp"] + counts["tn"]) / n if n else None
    counts["base_rate_pass"] = (counts["tp"] + counts["fn"]) / n if n else None
    counts["always_no_agreement"] = (counts["tn"] + counts["fp"]) / n if n else None
    return counts


def pair_quality(trees, problems) -> dict:
    """Every refine pair: constraints the chosen side satisfies against the rejected side's."""
    ds, _ = export(trees, "refine_pairs")
    out = {"pairs": len(ds), "more": 0, "same": 0, "fewer": 0}
    for row in ds:
        problem = problems[row["problem_id"]]
        a, b = sum(check(problem, row["chosen"])), sum(check(problem, row["rejected"]))
        out["more" if a > b else "same" if a == b else "fewer"] += 1
    out["more_share"] = out["more"] / out["pairs"] if out["pairs"] else None
    return out


async def main_async(args) -> dict:
    problems = generate(args.problems, seed=args.seed, n_constraints=args.constraints)
    policy = make_policy("vllm", None, max_model_len=2048, cpu_kv_cache_gib=args.cpu_kv_gib)
    try:
        env = build_env("response", {}, policy=policy)
        ctx = SearchContext(env=env, policy=policy, sampling=Sampling(temperature=0.9, top_p=0.95,
                                                                      max_tokens=args.max_tokens))
        cfg = RefineConfig(n_responses=args.responses, judge_k=args.judge_k, branching=args.branching,
                           keep_top=args.keep_top, max_levels=args.levels)
        out = Path(tempfile.mkdtemp(prefix="treepref-instructions-"))
        t0 = time.perf_counter()
        summary = await run_problems(problems, refine, cfg, ctx, out, concurrency=args.problems, progress=False)
        wall = time.perf_counter() - t0
    finally:
        policy.close()
    trees = load_trees(out)
    by_id = {p.id: p for p in problems}
    return {"settings": vars(args), "machine": platform.platform(), "wall_s": round(wall, 1),
            "searched": summary.searched, "failed": summary.failed,
            "generated_tokens": sum(t.meta.get("generated_tokens", 0) for t in trees),
            "passed_by_judge": sum(1 for t in trees if t.meta.get("stats", {}).get("passed") is not None),
            "judge": judge_agreement(trees, by_id), "refine_pairs": pair_quality(trees, by_id)}


def report_md(r: dict) -> str:
    j, p = r["judge"], r["refine_pairs"]
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    return "\n".join([
        "# SPaR on checkable instructions: the embedded model as judge and refiner",
        "",
        f"`python bench/instructions.py --problems {r['settings']['problems']}` — {r['searched']} problems, "
        f"{r['generated_tokens']:,} generated tokens, {r['wall_s']} s on {r['machine']} (vLLM-CPU).",
        "",
        "| judged responses | judge agrees with the checker | responses that pass (checker) | always-\"no\" agrees |",
        "|---|---|---|---|",
        f"| {j['judged']} | {pct(j['agreement'])} (tp {j['tp']}, tn {j['tn']}, fp {j['fp']}, fn {j['fn']}) | "
        f"{pct(j['base_rate_pass'])} | {pct(j['always_no_agreement'])} |",
        "",
        "| refine pairs | chosen satisfies more constraints | as many | fewer |",
        "|---|---|---|---|",
        f"| {p['pairs']} | {p['more']} ({pct(p['more_share'])}) | {p['same']} | {p['fewer']} |",
        "",
        f"Searches that stopped at a response the judge passed: {r['passed_by_judge']} of {r['searched']}.",
        "",
        _reading(j, p),
    ]) + "\n"


def _reading(j: dict, p: dict) -> str:
    """What the two tables say, in words (so the report cannot be read more kindly than its numbers)."""
    out = []
    if j["agreement"] is not None and j["always_no_agreement"] is not None:
        better = j["agreement"] > j["always_no_agreement"]
        out.append(f"The judge {'beats' if better else 'does not beat'} always answering \"no\" "
                   f"({j['agreement']:.0%} against {j['always_no_agreement']:.0%}); it passes {j['fp']} responses "
                   f"the checker fails and fails {j['fn']} it passes.")
    if p["pairs"]:
        out.append(f"{p['more']} of {p['pairs']} refine pairs prefer a response that meets more constraints, "
                   f"{p['fewer']} one that meets fewer: with this judge the pairs carry "
                   f"{'some' if p['more'] > p['fewer'] else 'no'} signal about the constraints.")
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--constraints", type=int, default=2)
    ap.add_argument("--responses", type=int, default=2)
    ap.add_argument("--judge-k", type=int, default=5)
    ap.add_argument("--branching", type=int, default=2)
    ap.add_argument("--keep-top", type=int, default=2)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--cpu-kv-gib", type=int, default=2)
    ap.add_argument("--name", default="instructions")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    args = ap.parse_args()
    if args.report_only:  # re-render the saved results (the report's wording changed, not the numbers)
        result = json.loads((RESULTS / f"{args.name}.json").read_text())
    else:
        result = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(RESULTS / f"{args.name}.md", report_md(result))
    print(report_md(result))


if __name__ == "__main__":
    main()
