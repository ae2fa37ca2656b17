"""Yield: good step pairs per generated token, tree search against flat best-of-N at an equal token budget.

Every search runs on the same built-in arithmetic problems (matched worked examples) with the same
per-problem ``token_budget``; flat best-of-N (``sample``) keeps drawing whole solutions until it has spent
the same budget, and its pairs come from the trie of its samples by the same rules as every tree. Every
pair of every run is audited by the exact oracle (``treepref.extract.quality.pair_label_quality``): good =
every prefix step right, chosen right, rejected wrong or off track. Each run is exported once per pair
rule and filter setting (``EXPORTS``: max_min or margin pairs; none, a successful prefix, minimum visits,
a prefix of values >= 0.5, a final rejected step), so what each costs and buys is visible side by side.
``--rewards`` runs each search with the outcome alone and/or with the environment's arithmetic step check
(``REWARDS``); ``--keep`` keeps the trees and ``--reaudit`` audits kept trees again under today's ``EXPORTS``.

    python bench/yield.py --backend vllm --difficulty 2,3 --seeds 0,1 --problems 64 --cpu-kv-gib 2
    python bench/yield.py --backend scripted --problems 4 --seeds 0 --difficulty 2   # checks the harness
    python bench/yield.py --problems 64 --reaudit /tmp/kept --out /tmp/yield-again  # new export settings

Writes ``bench/results/yield.json`` (a list of records: search, reward, difficulty, seed, filters, generated_tokens,
pairs, good, good_share, good_per_1m_tokens, problems_with_good, tokens_per_good, the oracle's buckets) and
``yield.md`` (medians over seeds, side by side). With ``--backend vllm`` the engine is spawned on CPU
machines, hence the ``__main__`` guard, and every run shares one ``asyncio.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treepref.backends import make_policy  # noqa: E402
from treepref.backends.base import Sampling  # noqa: E402
from treepref.domains.arithmetic import generate, worked_examples  # noqa: E402
from treepref.envs.reasoning import ReasoningEnv  # noqa: E402
from treepref.extract import export  # noqa: E402
from treepref.extract.quality import pair_label_quality  # noqa: E402
from treepref.runner import load_trees, run_problems  # noqa: E402
from treepref.search import build_config, get_search  # noqa: E402
from treepref.search.base import SearchContext  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402

# Search settings compared; each gets ``token_budget`` added. Flat best-of-N draws ``n`` solutions a request.
SEARCHES = {
    "mcts": ("mcts", {"simulations": 200, "k": 3, "n_rollouts": 2, "c_puct": 1.0, "parallel_simulations": 2}),
    "mcts_completions": ("mcts", {"simulations": 200, "expansion": "completions", "n_rollouts": 4, "c_puct": 1.0,
                                  "parallel_simulations": 2}),
    "mcts_rewiden": ("mcts", {"simulations": 200, "k": 3, "n_rollouts": 2, "c_puct": 1.0, "parallel_simulations": 2,
                              "rewiden": 3}),
    "best_first": ("best_first", {"k": 3, "n_rollouts": 2, "max_expansions": 200, "stop_at_correct": False}),
    "best_first_rewiden": ("best_first", {"k": 3, "n_rollouts": 2, "max_expansions": 200, "stop_at_correct": False,
                                          "rewiden": 3}),
    "beam": ("beam", {"beam_width": 2, "k": 3, "n_rollouts": 2, "max_depth": 8}),
    "sample": ("sample", {"n": 4}),
}
# What a finished path earns: the stated answer alone, or also no false arithmetic on the way (the env's
# step_check; it knows nothing of the reference solution, so a true step off the intended route passes), or
# also only numbers the problem or an earlier step states (arithmetic_grounded).
REWARDS = {"outcome": None, "checked": "arithmetic", "grounded": "arithmetic_grounded"}
# Export settings every run is exported with: (pair rule, filters). "defaults" are the export's own pair
# filters (a successful prefix, two visits per non-final side: ``extract.stats.FILTER_DEFAULTS``), which
# were chosen from this bench; "no filter" turns them off; "value prefix" asks every prefix node for a value
# >= 0.5 instead of a success below it, "exact rejected" a final rejected step (its value is its reward), and
# "judged rejected" one the environment judged (a wrong answer or a false step, not a stop without an answer).
NO_FILTER = {"prefix": None, "min_visits": None}
EXPORTS = {
    "max_min, no filter": ("max_min", NO_FILTER),
    "max_min, defaults": ("max_min", {}),
    "max_min, defaults + exact rejected": ("max_min", {"exact_rejected": True}),
    "max_min, value prefix + exact rejected": ("max_min", {"prefix": "value", "exact_rejected": True}),
    "margin, defaults": ("margin", {}),
    "margin, value prefix + exact rejected": ("margin", {"prefix": "value", "exact_rejected": True}),
    "max_min, value prefix + judged rejected": ("max_min", {"prefix": "value", "exact_rejected": "judged"}),
    "margin, value prefix + judged rejected": ("margin", {"prefix": "value", "exact_rejected": "judged"}),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf", "scripted"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--difficulty", default="2,3")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--budget", default="2:800,3:1200", help="tokens per problem, per difficulty (d:tokens,...)")
    ap.add_argument("--searches", default=",".join(SEARCHES))
    ap.add_argument("--rewards", default="outcome,checked",
                    help="outcome: the final answer alone; checked: also env step_check=arithmetic (a step "
                         "stating false arithmetic ends its path unrewarded); grounded: step_check="
                         "arithmetic_grounded (also a step computing with a number nothing before stated)")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--step-tokens", type=int, default=64)
    ap.add_argument("--rollout-tokens", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--cpu-kv-gib", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "yield"))
    ap.add_argument("--keep", default=None, help="also keep every run's trees under this folder")
    ap.add_argument("--reaudit", default=None, metavar="KEPT",
                    help="generate nothing: audit the trees an earlier --keep KEPT holds under today's EXPORTS")
    return ap.parse_args(argv)


def scripted_policy():
    """A scripted stand-in that writes arithmetic-looking steps, to check the harness without a model."""
    from treepref.backends.scripted import EOS, ScriptedPolicy

    return ScriptedPolicy(lambda steps: ["1 + 1 = 2", "1 + 1 = 3", "The answer is 2." + EOS][: 3 - len(steps) % 2])


def record(search, reward, difficulty, seed, filt, trees, rows, problems, wall):
    q = pair_label_quality(rows, {p.id: p for p in problems})
    tokens = sum(t.meta.get("generated_tokens", 0) for t in trees)
    good = q["good"]
    return {"search": search, "reward": reward, "difficulty": difficulty, "seed": seed, "filters": filt,
            "problems": len(trees), "generated_tokens": tokens, "pairs": q["pairs"], "good": good,
            "good_share": q["good_share"], "good_per_1m_tokens": round(good / tokens * 1e6, 1) if tokens else None,
            "problems_with_good": q["problems_with_good"],
            "tokens_per_good": round(tokens / good, 1) if good else None,
            "buckets": {k: q[k] for k in q if not k.endswith("_share") and k not in ("steps", "problems_with_good")},
            "steps": q["steps"],
            "wall_s": None if wall is None else round(wall, 1)}


async def run_all(args, policy):
    records = []
    budgets = {int(d): int(b) for d, b in (x.split(":") for x in args.budget.split(","))}
    for difficulty, reward in itertools.product([int(d) for d in args.difficulty.split(",")],
                                                args.rewards.split(",")):
        env = ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=difficulty + 3, max_tokens=320,
                           few_shot=worked_examples(difficulty), step_check=REWARDS[reward])
        sampling = Sampling(temperature=args.temperature, top_p=0.95, max_tokens=args.step_tokens)
        ctx = SearchContext(env=env, policy=policy, sampling=sampling, rollout_max_tokens=args.rollout_tokens)
        for seed in [int(s) for s in args.seeds.split(",")]:
            problems = generate(args.problems, seed=seed, difficulty=difficulty)
            for name in args.searches.split(","):
                search, options = SEARCHES[name]
                cfg = build_config(search, {**options, "token_budget": budgets[difficulty]}, "bench/yield.py")
                with tempfile.TemporaryDirectory(prefix="yield-") as tmp:
                    folder = Path(args.keep) / f"{name}-{reward}-d{difficulty}-s{seed}" if args.keep else Path(tmp)
                    t0 = time.perf_counter()
                    await run_problems(problems, get_search(search), cfg, ctx, folder, concurrency=args.concurrency,
                                       resume=False, progress=False)
                    wall = time.perf_counter() - t0
                    trees = load_trees(folder)
                    if args.keep:
                        atomic_write_text(folder / "wall.json", json.dumps({"wall_s": wall}))
                records += audit(name, reward, difficulty, seed, trees, problems, wall)
                save(args, records)
    return records


def audit(name, reward, difficulty, seed, trees, problems, wall) -> list[dict]:
    """One record per export setting of one run's trees, each pair judged by the oracle."""
    out = []
    for label, (rule, filt) in EXPORTS.items():
        ds, _ = export(trees, "step_pairs", rule=rule, **filt)
        rec = record(name, reward, difficulty, seed, label, trees, list(ds), problems, wall)
        out.append(rec)
        print(json.dumps({k: rec[k] for k in ("search", "reward", "difficulty", "seed", "filters", "generated_tokens",
                                              "pairs", "good", "good_share", "good_per_1m_tokens")}), flush=True)
    return out


def reaudit(args) -> list[dict]:
    """Records for trees an earlier run kept (``--keep``): the same trees under today's ``EXPORTS``, without
    generating anything, so a new export setting is compared on exactly the data the old ones saw."""
    records = []
    for folder in sorted(Path(args.reaudit).iterdir()):
        m = re.fullmatch(r"(?P<name>\w+)-(?P<reward>\w+)-d(?P<d>\d+)-s(?P<seed>\d+)", folder.name)
        if m is None or not folder.is_dir():
            continue
        d, seed = int(m["d"]), int(m["seed"])
        trees = load_trees(folder)
        wall_file = folder / "wall.json"
        wall = json.loads(wall_file.read_text())["wall_s"] if wall_file.exists() else None
        problems = generate(args.problems, seed=seed, difficulty=d)
        records += audit(m["name"], m["reward"], d, seed, trees, problems, wall)
    return records


def median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def table(records) -> str:
    lines = ["| difficulty | reward | search | export | tokens | pairs | good | good share | good per 1M tokens | "
             "problems with a good pair | tokens per good pair |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    group = lambda r: (r["difficulty"], r.get("reward", "outcome"), r["filters"], r["search"])  # noqa: E731
    keys = sorted({group(r) for r in records}, key=lambda k: (k[0], k[1], list(EXPORTS).index(k[2]), k[3]))
    for key in keys:
        rs = [r for r in records if group(r) == key]
        m = {k: median([r[k] for r in rs]) for k in ("generated_tokens", "pairs", "good", "good_share",
                                                      "good_per_1m_tokens", "problems_with_good", "tokens_per_good")}
        d, reward, f, s = key
        lines.append(f"| {d} | {reward} | {s} | {f} | {m['generated_tokens']} | {m['pairs']} | {m['good']} | "
                     f"{m['good_share']} | **{m['good_per_1m_tokens']}** | {m['problems_with_good']} | "
                     f"{m['tokens_per_good']} |")
    return "\n".join(lines)


def save(args, records) -> None:
    out = Path(args.out)
    meta = {"command": "python bench/yield.py " + " ".join(sys.argv[1:]), "machine": platform.platform(),
            "exports": EXPORTS, "searches": SEARCHES}
    atomic_write_text(out.with_suffix(".json"), json.dumps(records, indent=1))
    atomic_write_text(out.with_name(out.name + "-meta.json"), json.dumps(meta, indent=1))
    atomic_write_text(out.with_suffix(".md"), f"# Yield at an equal token budget\n\n`{meta['command']}`\n\n"
                      f"Medians over seeds. Export settings (rule, filters): {EXPORTS}.\n\n{table(records)}\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reaudit:
        records = reaudit(args)
        save(args, records)
        print(table(records))
        return 0
    if args.backend == "scripted":
        policy = scripted_policy()
    elif args.backend == "vllm":
        policy = make_policy("vllm", args.model, cpu_kv_cache_gib=args.cpu_kv_gib, max_model_len=2048)
    else:
        policy = make_policy(args.backend, args.model)

    async def go():
        try:
            return await run_all(args, policy)
        finally:
            close = getattr(policy, "close", None)
            if close:
                close()

    records = asyncio.run(go())
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
