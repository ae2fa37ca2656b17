"""Yield: good step pairs at equal *spent* tokens, tree search against flat best-of-N, pooled over seeds.

Every search runs on the same built-in arithmetic problems (matched worked examples, the derived step
check: true, grounded steps and an answer derived from every number the problem states) with the same per-problem ``token_budget``; the trees spend it (``fill_budget``) and, with
``--share-budget``, hand what a tree cannot use to the trees that can (``run.share_budget``). Flat best-of-N
(``sample``) then samples each problem until it has spent what the tree spent there, and its trie is cut back
to the first solutions whose tokens come closest to the tree's spend on that problem
(``search.sample.first_solutions``), so each comparison is at the same spend problem by problem. Every pair
is judged by the exact oracle (``extract.quality.classify_pair``): good = every prefix step right, chosen right,
rejected wrong or off track. Counts are pooled over seeds (a different problem set each) with bootstrap 95%
intervals over problems, and the tree ÷ flat ratio is bootstrapped on the same resampled problems (paired).

    python bench/yield.py --difficulty 2,3 --seeds 0,1,2,3 --problems 64 --searches best_first,mcts
    python bench/yield.py --difficulty 3 --problems 12 --add   # one difficulty more, into the same result
    python bench/yield.py --backend scripted --problems 4 --seeds 0 --difficulty 2   # checks the harness

Writes ``bench/results/yield.json`` (one record per search, difficulty, seed and export: search, difficulty,
seed, filters, budget_tokens, spent_tokens, pairs, good, good_share, good_per_1m_tokens, good_per_problem,
problems_with_good, distinct_chosen, depth_histogram, the oracle's buckets), ``yield-pooled.json`` (pooled
counts with intervals) and ``yield.md``. With ``--backend vllm`` the engine is spawned on CPU machines, hence
the ``__main__`` guard, and every run shares one ``asyncio.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treepref.backends import make_policy  # noqa: E402
from treepref.backends.base import Sampling  # noqa: E402
from treepref.domains.arithmetic import generate, worked_examples  # noqa: E402
from treepref.envs.reasoning import ReasoningEnv  # noqa: E402
from treepref.extract import export  # noqa: E402
from treepref.extract.quality import classify_pair  # noqa: E402
from treepref.runner import load_trees, run_problems, tree_path  # noqa: E402
from treepref.search import build_config, get_search  # noqa: E402
from treepref.search.base import SearchContext  # noqa: E402
from treepref.search.sample import SampleConfig, first_solutions, sample  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402

# Tree searches compared; each gets ``token_budget`` added (and spends it: ``fill_budget`` is on by default).
SEARCHES = {
    "mcts": ("mcts", {"simulations": 200, "k": 3, "n_rollouts": 2, "c_puct": 1.0, "parallel_simulations": 2}),
    "mcts_rewiden": ("mcts", {"simulations": 200, "k": 3, "n_rollouts": 2, "c_puct": 1.0, "parallel_simulations": 2,
                              "rewiden": 2}),
    "best_first": ("best_first", {"k": 3, "n_rollouts": 2, "max_expansions": 200, "stop_at_correct": False,
                                  "parallel_expansions": 2}),
    "best_first_nofill": ("best_first", {"k": 3, "n_rollouts": 2, "max_expansions": 200, "stop_at_correct": False,
                                         "fill_budget": False}),
}
FLAT_N = 4  # whole solutions per flat request
# Export settings (pair rule, filters). "judged rejected": the rejected step ended its path on the environment's
# verdict (a wrong answer, a false step), so its value is exact; "value prefix": every prefix step's value is
# >= 0.5; "success prefix" (the export's default, with two visits per non-final side): the pair's parent lies on
# a path that reached the answer; "checked steps": no step of prose (nothing the step check could judge) is
# chosen or in the prefix.
EXPORTS = {
    "max_min, value prefix + judged rejected": ("max_min", {"prefix": "value", "exact_rejected": "judged"}),
    "margin, value prefix + judged rejected": ("margin", {"prefix": "value", "exact_rejected": "judged"}),
    "max_min, success prefix + judged rejected": ("max_min", {"exact_rejected": "judged"}),
    "margin, success prefix + judged rejected": ("margin", {"exact_rejected": "judged"}),
    "max_min, success prefix + judged rejected + checked steps": ("max_min", {"exact_rejected": "judged",
                                                                             "checked_steps": True}),
    "margin, success prefix + judged rejected + checked steps": ("margin", {"exact_rejected": "judged",
                                                                           "checked_steps": True}),
    "margin, defaults": ("margin", {}),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf", "scripted"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--difficulty", default="2,3")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--budget", default="2:400,3:600", help="tokens per problem, per difficulty (d:tokens,...)")
    ap.add_argument("--searches", default="best_first")
    ap.add_argument("--share-budget", action=argparse.BooleanOptionalAction, default=True,
                    help="one token pool per run: what a tree cannot use goes to trees that can (run.share_budget)")
    ap.add_argument("--step-check", default="arithmetic_derived")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--step-tokens", type=int, default=64)
    ap.add_argument("--rollout-tokens", type=int, default=160)
    ap.add_argument("--rollout-by-step", action=argparse.BooleanOptionalAction, default=True,
                    help="the trees' completions go one step per request and end at the first slip (sampling.rollout_by_step)")
    ap.add_argument("--flat-by-step", action=argparse.BooleanOptionalAction, default=False,
                    help="flat sampling's solutions too (default: whole solutions, the usual best-of-N)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--cpu-kv-gib", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "yield"))
    ap.add_argument("--add", action="store_true",
                    help="keep the output's records of other difficulties and seeds (run them one at a time)")
    ap.add_argument("--keep", default=None, help="also keep every run's trees under this folder")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: read back the trees kept there instead of searching again (re-exports "
                         "kept runs under new export settings; --backend scripted then needs no model)")
    args = ap.parse_args(argv)
    if args.reuse and not args.keep:
        ap.error("--reuse reads the trees of --keep: name the folder")
    return args


def scripted_policy():
    """A scripted stand-in that writes arithmetic-looking steps, to check the harness without a model."""
    from treepref.backends.scripted import EOS, ScriptedPolicy

    return ScriptedPolicy(lambda steps: ["1 + 1 = 2", "1 + 1 = 3", "The answer is 2." + EOS][: 3 - len(steps) % 2])


def spent(tree) -> int:
    return tree.meta.get("generated_tokens", 0)


def judged_rows(trees, problems, rule, filt) -> list[dict]:
    """The export's rows, each with the oracle's bucket."""
    ds, _ = export(trees, "step_pairs", rule=rule, **filt)
    rows = []
    for row in ds:
        bucket, *_ = classify_pair(row, problems)
        rows.append({"problem_id": row["problem_id"], "depth": row["depth"], "chosen": row["chosen"],
                     "bucket": bucket})
    return rows


def record(search, difficulty, seed, label, trees, rows, budget, wall) -> dict:
    tokens = sum(spent(t) for t in trees)
    good = [r for r in rows if r["bucket"] == "good"]
    per_problem = Counter(r["problem_id"] for r in good)
    return {"search": search, "difficulty": difficulty, "seed": seed, "filters": label,
            "problems": len(trees), "budget_tokens": budget * len(trees), "spent_tokens": tokens,
            "pairs": len(rows), "good": len(good), "good_share": round(len(good) / len(rows), 4) if rows else None,
            "good_per_1m_tokens": round(len(good) / tokens * 1e6, 1) if tokens else None,
            "good_per_problem": round(len(good) / len(trees), 4) if trees else None,
            "problems_with_good": len(per_problem),
            "distinct_chosen": len({(r["problem_id"], r["chosen"]) for r in good}),
            "depth_histogram": dict(sorted(Counter(r["depth"] for r in good).items())),
            "depth_histogram_all": dict(sorted(Counter(r["depth"] for r in rows).items())),
            "buckets": dict(Counter(r["bucket"] for r in rows)),
            "good_by_problem": {t.problem_id: per_problem.get(t.problem_id, 0) for t in trees},
            "pairs_by_problem": dict(Counter(r["problem_id"] for r in rows)),
            "spent_by_problem": {t.problem_id: spent(t) for t in trees},
            "wall_s": None if wall is None else round(wall, 1)}


async def run_search(problems, search, options, ctx, folder, args, share) -> tuple[list, float | None]:
    """The search's trees on ``problems`` and its wall time (None when ``--reuse`` read every tree back)."""
    cfg = build_config(search, options, "bench/yield.py") if isinstance(options, dict) else options
    kept = args.reuse and all(tree_path(Path(folder), p.id).exists() for p in problems)
    t0 = time.perf_counter()
    await run_problems(problems, get_search(search) if isinstance(search, str) else search, cfg, ctx, folder,
                       concurrency=args.concurrency, resume=args.reuse, progress=False, share_budget=share)
    return load_trees(folder), None if kept else time.perf_counter() - t0


def earlier_records(args) -> list[dict]:
    """With ``--add``: the records already in the output of the (difficulty, seed) pairs this run does not
    measure, so difficulties (each at its own ``--problems``) and more seeds can be run one at a time into one
    pooled result."""
    path = Path(args.out).with_suffix(".json")
    if not args.add or not path.exists():
        return []
    ours = {(int(d), int(s)) for d in args.difficulty.split(",") for s in args.seeds.split(",")}
    return [r for r in json.loads(path.read_text()) if (r["difficulty"], r["seed"]) not in ours]


async def run_all(args, policy):
    records = earlier_records(args)
    budgets = {int(d): int(b) for d, b in (x.split(":") for x in args.budget.split(","))}
    names = args.searches.split(",")
    for difficulty in [int(d) for d in args.difficulty.split(",")]:
        env = ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=difficulty + 3, max_tokens=320,
                           few_shot=worked_examples(difficulty), step_check=args.step_check)
        sampling = Sampling(temperature=args.temperature, top_p=0.95, max_tokens=args.step_tokens)
        ctx = SearchContext(env=env, policy=policy, sampling=sampling, rollout_max_tokens=args.rollout_tokens,
                            rollout_by_step=args.rollout_by_step)
        flat_ctx = dataclasses.replace(ctx, rollout_by_step=args.flat_by_step)
        budget = budgets[difficulty]
        for seed in [int(s) for s in args.seeds.split(",")]:
            problems = generate(args.problems, seed=seed, difficulty=difficulty)
            by_id = {p.id: p for p in problems}
            with tempfile.TemporaryDirectory(prefix="yield-") as tmp:
                root = Path(args.keep) if args.keep else Path(tmp)
                trees_of = {}
                for name in names:
                    search, options = SEARCHES[name]
                    trees, wall = await run_search(problems, search, {**options, "token_budget": budget}, ctx,
                                                   root / f"{name}-d{difficulty}-s{seed}", args, args.share_budget)
                    trees_of[name] = (trees, wall)
                # flat sampling up to the most any search spent on each problem, then cut to each one's spend
                most = {p.id: max(spent(t) for trees, _ in trees_of.values() for t in trees if t.problem_id == p.id)
                        for p in problems}

                async def flat(problem, ctx_, cfg):
                    return await sample(problem, ctx_, dataclasses.replace(cfg, token_budget=max(1, most[problem.id])))

                flat_trees, flat_wall = await run_search(problems, flat, SampleConfig(n=FLAT_N, token_budget=1), flat_ctx,
                                                         root / f"sample-d{difficulty}-s{seed}", args, False)
                flat_by_id = {t.problem_id: t for t in flat_trees}
                for name, (trees, wall) in trees_of.items():
                    cut = [first_solutions(flat_by_id[t.problem_id], spent(t)) for t in trees]
                    for label, (rule, filt) in EXPORTS.items():
                        for search, ts, w in ((name, trees, wall), (f"flat@{name}", cut, flat_wall)):
                            rec = record(search, difficulty, seed, label, ts, judged_rows(ts, by_id, rule, filt),
                                         budget, w)
                            records.append(rec)
                            print(json.dumps({k: rec[k] for k in ("search", "difficulty", "seed", "filters",
                                                                  "spent_tokens", "pairs", "good", "good_share")}),
                                  flush=True)
            save(args, records)
    return records


def bootstrap(values_a, values_b, n, rng) -> dict:
    """Sums of ``a`` and ``b`` over problems with 95% percentile intervals, and the paired ratio a/b."""
    idx = range(len(values_a))
    sums_a, sums_b, ratios = [], [], []
    for _ in range(n):
        pick = [rng.choice(idx) for _ in idx]
        a, b = sum(values_a[i] for i in pick), sum(values_b[i] for i in pick)
        sums_a.append(a)
        sums_b.append(b)
        ratios.append(a / b if b else float("inf"))

    def ci(xs):
        xs = sorted(xs)
        return [round(xs[int(0.025 * len(xs))], 3), round(xs[int(0.975 * len(xs)) - 1], 3)]

    total_a, total_b = sum(values_a), sum(values_b)
    return {"a": total_a, "a_ci": ci(sums_a), "b": total_b, "b_ci": ci(sums_b),
            "ratio": round(total_a / total_b, 3) if total_b else None, "ratio_ci": ci(ratios)}


def pooled(records, n_boot: int, seed: int = 0) -> list[dict]:
    """Per (difficulty, export, search): counts over all seeds' problems, each search beside flat at its spend."""
    rng = random.Random(seed)
    out = []
    keys = sorted({(r["difficulty"], r["filters"], r["search"]) for r in records if not r["search"].startswith("flat@")},
                  key=lambda k: (k[0], list(EXPORTS).index(k[1]) if k[1] in EXPORTS else 99, k[2]))
    for d, label, search in keys:
        tree = [r for r in records if (r["difficulty"], r["filters"], r["search"]) == (d, label, search)]
        flat = {r["seed"]: r for r in records if (r["difficulty"], r["filters"], r["search"]) == (d, label, f"flat@{search}")}
        good_t, good_f = [], []
        for r in tree:
            f = flat[r["seed"]]
            for pid, g in r["good_by_problem"].items():
                good_t.append(g)
                good_f.append(f["good_by_problem"][pid])
        boot = bootstrap(good_t, good_f, n_boot, rng)

        def total(rs, key):
            return sum(r[key] for r in rs)

        depth = Counter()
        for r in tree:
            depth.update({int(k): v for k, v in r["depth_histogram"].items()})
        good = total(tree, "good")
        out.append({
            "difficulty": d, "filters": label, "search": search, "seeds": sorted(r["seed"] for r in tree),
            "problems": total(tree, "problems"), "budget_tokens": total(tree, "budget_tokens"),
            "spent_tokens": total(tree, "spent_tokens"), "flat_spent_tokens": total(flat.values(), "spent_tokens"),
            "pairs": total(tree, "pairs"), "good": good, "good_ci": boot["a_ci"],
            "good_share": round(good / total(tree, "pairs"), 4) if total(tree, "pairs") else None,
            "flat_pairs": total(flat.values(), "pairs"), "flat_good": boot["b"], "flat_good_ci": boot["b_ci"],
            "flat_good_share": (round(boot["b"] / total(flat.values(), "pairs"), 4)
                                if total(flat.values(), "pairs") else None),
            "ratio": boot["ratio"], "ratio_ci": boot["ratio_ci"],
            "good_per_problem": round(good / total(tree, "problems"), 4),
            "flat_good_per_problem": round(boot["b"] / total(tree, "problems"), 4),
            "problems_with_good": total(tree, "problems_with_good"),
            "flat_problems_with_good": total(flat.values(), "problems_with_good"),
            "distinct_chosen": total(tree, "distinct_chosen"), "flat_distinct_chosen": total(flat.values(), "distinct_chosen"),
            "depth_histogram": dict(sorted(depth.items())),
            "good_at_depth_2_plus": round(sum(v for k, v in depth.items() if k >= 2) / good, 3) if good else None,
        })
    return out


def table(rows) -> str:
    lines = ["| d | export | search | spent (tree / flat) | good pairs, tree [95%] | good pairs, flat [95%] | "
             "tree ÷ flat [95%] | good share (tree / flat) | good per problem | problems with good | "
             "distinct chosen | good at depth ≥ 2 | depth histogram |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['difficulty']} | {r['filters']} | {r['search']} | {r['spent_tokens']:,} / "
                     f"{r['flat_spent_tokens']:,} | **{r['good']}** {r['good_ci']} | {r['flat_good']} {r['flat_good_ci']} | "
                     f"**{r['ratio']}** {r['ratio_ci']} | {r['good_share']} / {r['flat_good_share']} | "
                     f"{r['good_per_problem']} / {r['flat_good_per_problem']} | {r['problems_with_good']} / "
                     f"{r['flat_problems_with_good']} | {r['distinct_chosen']} / {r['flat_distinct_chosen']} | "
                     f"{r['good_at_depth_2_plus']} | {r['depth_histogram']} |")
    return "\n".join(lines)


def save(args, records) -> None:
    out = Path(args.out)
    rows = pooled(records, args.bootstrap)
    command = "python bench/yield.py " + " ".join(sys.argv[1:])
    meta_path = out.with_name(out.name + "-meta.json")
    old = json.loads(meta_path.read_text()) if args.add and meta_path.exists() else {}
    earlier = old.get("commands", [old["command"]] if "command" in old else [])
    commands = [c for c in earlier if c != command] + [command]
    meta = {"command": command, "commands": commands, "machine": platform.platform(),
            "exports": EXPORTS, "searches": SEARCHES, "flat_n": FLAT_N, "rollout_by_step": args.rollout_by_step,
            "flat_by_step": args.flat_by_step}
    atomic_write_text(out.with_suffix(".json"), json.dumps(records, indent=1))
    atomic_write_text(out.with_name(out.name + "-pooled.json"), json.dumps(rows, indent=1))
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    atomic_write_text(out.with_suffix(".md"), "# Yield at equal spent tokens\n\n" + "".join(f"`{c}`\n\n" for c in commands) +
                      "Pooled over seeds; intervals are bootstrap 95% over problems (the ratio paired on the same "
                      "resampled problems). Flat best-of-N is cut, problem by problem, to the tree's spend. "
                      f"The trees' completions {'go one step per request and end at the first slip' if args.rollout_by_step else 'are whole'}; "
                      f"flat's solutions {'go one step per request and end at the first slip' if args.flat_by_step else 'are whole'}.\n\n"
                      f"{table(rows)}\n")


def main(argv=None) -> int:
    args = parse_args(argv)
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
    print(table(pooled(records, args.bootstrap)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
