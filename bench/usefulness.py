"""Usefulness: does training on treepref's data help? A verifier table and a policy table from one run.

1. Data. Training problems (built-in arithmetic, ``--train-seed``) are searched with MCTS as in
   ``configs/demo.yaml`` and with flat best-of-N (``sample``) at the same generation budget: by default flat
   sampling's per-problem ``token_budget`` is what MCTS actually spent per problem (``--flat-budget match``),
   since at difficulty 1 MCTS exhausts its small tree long before its own ``--budget``.
   MCTS trees give step pairs (``step_pairs``, max_min, default filters) for step-DPO, margin-rule step pairs
   for the verifier (more pairs), and Monte Carlo step labels (``stepwise``) for the PRM; flat samples give
   whole-solution pairs (``trajectory_pairs``) for plain DPO. Each set is subsampled to what the training
   steps read (``--steps`` x batch), spread over problems, so no example is paid for and never used.
2. Training (``treepref.train.trainer.train``): step-DPO, plain DPO, a pairwise verifier, a stepwise PRM,
   each with LoRA on the top ``--lora-layers`` layers (full fine-tuning of 135M in fp32 costs ~40 s a step
   on 2 CPU cores; LoRA on the top 8 layers ~5 s).
3. Held-out problems (``--heldout-seed``, never searched): ``--n`` samples per problem from the base policy,
   reranked by majority vote, the base policy's mean token log-prob, the verifier and the PRM (min over
   steps; last step), with oracle / first-sample / mean-sample accuracy for reference
   (``treepref.train.evaluate``); and each policy's held-out accuracy, greedy and over ``--policy-samples``
   samples.

    .venv/bin/python bench/usefulness.py --backend vllm --cpu-kv-gib 2
    .venv/bin/python bench/usefulness.py --train-problems 6 --heldout-problems 6 --steps 2 --n 8 \\
        --out /tmp/usefulness-tiny      # the harness end to end in a few minutes

Writes ``<out>.json`` (a list of records, each with a ``table`` key: meta, data, train, rerank, policy,
timing) and ``<out>.md`` (the tables, settings, wall time per phase and what the numbers do and do not
show), atomically, after every phase. With ``--backend vllm`` the engine is spawned on CPU machines, hence
the ``__main__`` guard; every engine of the run lives in one ``asyncio.run``, one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treepref.backends import make_policy  # noqa: E402
from treepref.backends.base import Sampling  # noqa: E402
from treepref.domains.arithmetic import generate, worked_examples  # noqa: E402
from treepref.envs.reasoning import ReasoningEnv  # noqa: E402
from treepref.extract.api import write_export  # noqa: E402
from treepref.extract.quality import pair_label_quality  # noqa: E402
from treepref.runner import load_trees, run_problems  # noqa: E402
from treepref.search import build_config, get_search  # noqa: E402
from treepref.search.base import SearchContext  # noqa: E402
from treepref.train import evaluate as ev  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402

# configs/demo.yaml's MCTS (k=3 steps per expansion, 2 rollouts per new leaf); the simulation cap is raised so
# that only the token budget or an exhausted tree (every leaf final) stops it.
MCTS = {"simulations": 200, "k": 3, "n_rollouts": 2, "c_puct": 1.0, "parallel_simulations": 2}
DEMO_SAMPLING = {"temperature": 0.9, "top_p": 0.95, "step_tokens": 64, "rollout_tokens": 192}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"], help="generation backend (vllm was run)")
    ap.add_argument("--model", default=None, help="base policy folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--train-problems", type=int, default=160)
    ap.add_argument("--train-seed", type=int, default=100)
    ap.add_argument("--train-difficulty", type=int, default=1)
    ap.add_argument("--budget", type=int, default=500, help="token_budget per training problem of MCTS")
    ap.add_argument("--flat-budget", default="match",
                    help="token_budget per problem of flat best-of-N: a number, or 'match' (what MCTS actually "
                         "generated per problem, on average: at difficulty 1 MCTS exhausts its tree far below "
                         "--budget)")
    ap.add_argument("--flat-n", type=int, default=4, help="solutions per request of flat best-of-N")
    ap.add_argument("--heldout-problems", type=int, default=64)
    ap.add_argument("--heldout-seed", type=int, default=999)
    ap.add_argument("--heldout-difficulty", default="1", help="comma list, e.g. 1,2")
    ap.add_argument("--n", type=int, default=8, help="best-of-N samples per held-out problem")
    ap.add_argument("--temperature", type=float, default=0.9,
                    help="held-out sampling temperature (top_p 0.95); default: the searches' own")
    ap.add_argument("--policy-samples", type=int, default=4, help="samples per problem for each policy's accuracy")
    ap.add_argument("--max-tokens", type=int, default=320, help="tokens per held-out solution")
    ap.add_argument("--steps", type=int, default=16, help="optimiser steps of step-DPO and of DPO")
    ap.add_argument("--head-steps", type=int, default=32,
                    help="optimiser steps of the verifier and the PRM (no reference pass, no LM head: cheaper)")
    ap.add_argument("--policy-batch", type=int, default=4, help="pairs per step, step-DPO and DPO")
    ap.add_argument("--head-batch", type=int, default=8, help="pairs (verifier) / paths (PRM) per step")
    ap.add_argument("--policy-lr", type=float, default=1e-4, help="LoRA learning rate of step-DPO and DPO")
    ap.add_argument("--head-lr", type=float, default=5e-4, help="learning rate of the verifier and PRM")
    ap.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-layers", type=int, default=8, help="LoRA on the top this many layers (0: all)")
    ap.add_argument("--verifier-rule", default="margin", choices=["margin", "max_min"])
    ap.add_argument("--prm-labels", default="hard", choices=["hard", "soft"])
    ap.add_argument("--seed", type=int, default=0, help="engine seed, data subsampling and training seed")
    ap.add_argument("--cpu-kv-gib", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="every engine's dtype: float32, so a trained policy's small "
                    "weight changes are not rounded away by bfloat16")
    ap.add_argument("--work", default=None, help="keep trees, exports and models here (default: a temp folder)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "usefulness"))
    return ap.parse_args(argv)


# -- helpers ----------------------------------------------------------------------------------------------
def spread(rows: list[dict], k: int, seed: int) -> list[dict]:
    """Up to ``k`` rows, taken round-robin over problems (each problem's rows shuffled), so a small training
    set covers as many problems as it can instead of the few with the most pairs."""
    rng = random.Random(seed)
    by = defaultdict(list)
    for r in rows:
        by[r.get("problem_id")].append(r)
    queues = [by[p] for p in sorted(by, key=str)]
    for q in queues:
        rng.shuffle(q)
    rng.shuffle(queues)
    out = []
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop())
    return out


def read_rows(export_dir: Path) -> list[dict]:
    path = export_dir / "rows.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def lora_options(args, model_dir: str) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    layers = int(cfg["num_hidden_layers"])
    opts = {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0}
    if args.lora_layers and args.lora_layers < layers:
        top = "|".join(str(i) for i in range(layers - args.lora_layers, layers))
        opts["target_modules"] = rf".*\.layers\.({top})\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    return opts


def backend_options(args) -> dict:
    opts = {"dtype": args.dtype, "seed": args.seed}
    if args.backend == "vllm":
        opts.update(cpu_kv_cache_gib=args.cpu_kv_gib, max_model_len=2048)
    return opts


def eval_env(policy, difficulty: int, max_tokens: int) -> ReasoningEnv:
    return ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=difficulty + 4,
                        max_tokens=max_tokens, few_shot=worked_examples(difficulty))


class Run:
    """The run's records, timings and saving."""

    def __init__(self, args):
        self.args = args
        self.records: list[dict] = []
        self.timing: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def add(self, table: str, **fields) -> dict:
        rec = {"table": table, **fields}
        self.records.append(rec)
        return rec

    def phase(self, name: str, seconds: float) -> None:
        self.timing[name] = round(seconds, 1)
        print(json.dumps({"phase": name, "seconds": round(seconds, 1),
                          "elapsed": round(time.perf_counter() - self.t0, 1)}), flush=True)
        self.save()

    def save(self) -> None:
        out = Path(self.args.out)
        recs = self.records + [{"table": "timing", **self.timing,
                                "total": round(time.perf_counter() - self.t0, 1),
                                "load_average_now": [round(x, 2) for x in os.getloadavg()]}]
        atomic_write_text(out.with_suffix(".json"), json.dumps(recs, indent=1, default=str))
        atomic_write_text(out.with_suffix(".md"), markdown(self.args, recs))


# -- the run -------------------------------------------------------------------------------------------------
async def run_all(args, run: Run, work: Path) -> None:
    from treepref.models import resolve_model
    from treepref.train.config import train_config_from_dict
    from treepref.train.trainer import train

    base = resolve_model(args.model)
    d_train = args.train_difficulty
    heldout_levels = [int(d) for d in args.heldout_difficulty.split(",")]
    train_problems = generate(args.train_problems, seed=args.train_seed, difficulty=d_train)
    train_texts = {p.prompt for p in train_problems}
    heldout = {d: held_out(args.heldout_problems, args.heldout_seed, d, train_texts) for d in heldout_levels}
    overlap = sum(p.prompt in train_texts for ps in heldout.values() for p in ps)
    run.add("meta", command="python bench/usefulness.py " + " ".join(sys.argv[1:]), machine=platform.platform(),
            base_model=base, settings=vars(args), mcts=MCTS, search_sampling=DEMO_SAMPLING,
            heldout_overlap_with_train=overlap, load_average_at_start=os.getloadavg())

    # 1. data, and the base policy's held-out samples, from one engine -----------------------------------------
    t = time.perf_counter()
    policy = make_policy(args.backend, args.model, **backend_options(args))
    run.phase("engine start (base)", time.perf_counter() - t)
    base_samples, base_greedy, base_prompts = {}, {}, {}
    try:
        env = ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=5, max_tokens=320,
                           few_shot=worked_examples(d_train))  # configs/demo.yaml's env
        ctx = SearchContext(env=env, policy=policy, rollout_max_tokens=DEMO_SAMPLING["rollout_tokens"],
                            sampling=Sampling(temperature=DEMO_SAMPLING["temperature"], top_p=DEMO_SAMPLING["top_p"],
                                              max_tokens=DEMO_SAMPLING["step_tokens"]))
        trees, budgets = {}, {"mcts": args.budget}
        for name, search, options in (("mcts", "mcts", MCTS), ("flat", "sample", {"n": args.flat_n})):
            t = time.perf_counter()
            if name == "flat":
                spent = sum(x.meta.get("generated_tokens", 0) for x in trees["mcts"]) / max(len(trees["mcts"]), 1)
                budgets["flat"] = math.ceil(spent) if args.flat_budget == "match" else int(args.flat_budget)
            cfg = build_config(search, {**options, "token_budget": budgets[name]}, "bench/usefulness.py")
            await run_problems(train_problems, get_search(search), cfg, ctx, work / name, concurrency=64,
                               resume=False, progress=False)
            trees[name] = load_trees(work / name)
            run.phase(f"search: {name}", time.perf_counter() - t)
        t = time.perf_counter()
        kw = {"template": policy.chat_prompt}
        exports = {
            "step_pairs": write_export(trees["mcts"], work / "exports" / "step_pairs", "step_pairs", **kw),
            "verifier_pairs": write_export(trees["mcts"], work / "exports" / "verifier_pairs", "step_pairs",
                                           rule=args.verifier_rule, **kw),
            "stepwise": write_export(trees["mcts"], work / "exports" / "stepwise", "stepwise", **kw),
            "trajectory_pairs": write_export(trees["flat"], work / "exports" / "trajectory_pairs", "trajectory_pairs",
                                             **kw),
        }
        run.phase("exports", time.perf_counter() - t)
        for d, problems in heldout.items():
            t = time.perf_counter()
            e = eval_env(policy, d, args.max_tokens)
            base_prompts[d] = [list(e.initial(p).token_ids) for p in problems]
            base_samples[d] = await ev.sample_solutions(policy, e, problems, n=args.n, max_tokens=args.max_tokens,
                                                        sampling=Sampling(temperature=args.temperature, top_p=0.95))
            base_greedy[d] = await ev.sample_solutions(policy, e, problems, n=1, max_tokens=args.max_tokens,
                                                       sampling=Sampling(temperature=0.0))
            run.phase(f"held-out sampling d{d} (base)", time.perf_counter() - t)
    finally:
        policy.close()

    problems_by_id = {p.id: p for p in train_problems}
    for name in ("mcts", "flat"):
        ts = trees[name]
        run.add("data", source=name, token_budget=budgets[name], problems=len(ts),
                generated_tokens=sum(x.meta.get("generated_tokens", 0) for x in ts),
                solved=sum(any(x.terminated[i] and (x.reward[i] or 0) >= 1 for i in range(len(x))) for x in ts))

    # 2. training sets and training ------------------------------------------------------------------------------
    lora = lora_options(args, base)
    plans = {  # name: (method, export, steps, examples per step, learning rate, extra loss settings)
        "step_dpo": ("dpo", "step_pairs", args.steps, args.policy_batch, args.policy_lr, {"beta": args.beta}),
        "dpo": ("dpo", "trajectory_pairs", args.steps, args.policy_batch, args.policy_lr, {"beta": args.beta}),
        "verifier": ("verifier", "verifier_pairs", args.head_steps, args.head_batch, args.head_lr, {}),
        "prm": ("prm", "stepwise", args.head_steps, args.head_batch, args.head_lr, {"labels": args.prm_labels}),
    }
    models = {}
    for name, (method, export_name, steps, batch, lr, loss) in plans.items():
        rows = read_rows(work / "exports" / export_name)
        used = spread(rows, steps * batch, args.seed)
        data = work / "data" / f"{name}.jsonl"
        write_jsonl(data, used)
        quality = None
        if export_name in ("step_pairs", "verifier_pairs") and used:
            q = pair_label_quality(used, problems_by_id)
            quality = {"good": q["good"], "pairs": q["pairs"], "good_share": q["good_share"]}
        rec = run.add("train", name=name, method=method, export=export_name, rows_available=len(rows),
                      rows_used=len(used), problems_used=len({r.get("problem_id") for r in used}),
                      oracle_quality=quality,
                      export_stats={k: exports[export_name].get(k) for k in ("filters", "dropped")})
        if not used:
            rec["skipped"] = "no rows"
            continue
        t = time.perf_counter()
        cfg = train_config_from_dict({
            "method": method, "data": str(data), "model": args.model, "output": str(work / "train" / name),
            "resume": False, "loss": loss,
            "train": {"max_steps": steps, "batch_size": batch, "learning_rate": lr, "max_length": 1024,
                      "seed": args.seed, "logging_steps": max(1, steps // 4), "save_steps": 10 ** 6,
                      "lora": lora, "progress": False, "reference_batch_size": 8}})
        summary = train(cfg)
        models[name] = summary["model"]
        rec.update(steps=summary["steps"], examples=summary["examples"], dropped_too_long=summary["dropped_too_long"],
                   train_loss=summary["train_loss"], log=summary["log"], lr=lr, batch=batch, lora=lora,
                   seconds=round(time.perf_counter() - t, 1))
        run.phase(f"train: {name}", time.perf_counter() - t)

    # 3a. reranking the base policy's samples -------------------------------------------------------------------
    from treepref.verifiers.trained import load_trained

    scores = {d: {"logprob": ev.logprob_scores(s)} for d, s in base_samples.items()}
    for name in ("verifier", "prm"):
        if name not in models:
            continue
        t = time.perf_counter()
        scorer = load_trained(models[name], batch_size=16)
        for d, samples in base_samples.items():
            if name == "verifier":
                scores[d]["verifier"] = ev.verifier_scores(scorer, samples)
            else:
                steps = ev.prm_step_scores(scorer, samples)
                scores[d]["prm_min"], scores[d]["prm_last"] = ev.aggregate(steps, "min"), ev.aggregate(steps, "last")
        del scorer
        run.phase(f"scoring: {name}", time.perf_counter() - t)
    for d, samples in base_samples.items():
        report = ev.rerank_report(heldout[d], samples, scores[d])
        distinct = sum(len({tuple(s.token_ids) for s in sols}) for sols in samples) / len(samples)
        for method, acc in report.items():
            run.add("rerank", difficulty=d, method=method, n_samples=args.n, distinct_per_problem=round(distinct, 2),
                    **acc)
        run.add("policy", policy="base", difficulty=d, **ev.policy_report(
            base_greedy[d], [s[:args.policy_samples] for s in samples]))
    run.save()

    # 3b. the trained policies' held-out accuracy --------------------------------------------------------------
    for name in ("step_dpo", "dpo"):
        if name not in models:
            continue
        t = time.perf_counter()
        policy = make_policy(args.backend, models[name], **backend_options(args))
        try:
            for d, problems in heldout.items():
                e = eval_env(policy, d, args.max_tokens)
                same = [list(e.initial(p).token_ids) for p in problems] == base_prompts[d]
                samples = await ev.sample_solutions(policy, e, problems, n=args.policy_samples,
                                                    max_tokens=args.max_tokens,
                                                    sampling=Sampling(temperature=args.temperature, top_p=0.95))
                greedy = await ev.sample_solutions(policy, e, problems, n=1, max_tokens=args.max_tokens,
                                                   sampling=Sampling(temperature=0.0))
                run.add("policy", policy=name, difficulty=d, prompts_match_base=same,
                        **ev.policy_report(greedy, samples))
        finally:
            policy.close()
        run.phase(f"policy eval: {name}", time.perf_counter() - t)


# -- the report ------------------------------------------------------------------------------------------------
LABELS = {"first": "first sample (best-of-1)", "mean_sample": "mean over samples", "oracle": "oracle (any of N right)",
          "majority": "majority vote", "logprob": "base model mean token log-prob", "verifier": "pairwise verifier",
          "prm_min": "PRM, min over steps", "prm_last": "PRM, last step"}
POLICY_LABELS = {"base": "base SmolLM2-135M", "step_dpo": "step-DPO on MCTS step pairs",
                 "dpo": "plain DPO on flat whole-solution pairs"}


def fmt_acc(a: dict | None) -> str:
    if not a or a.get("accuracy") is None:
        return "-"
    lo, hi = a["ci95"]
    return f"{a['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] ({a['correct']}/{a['n']})"


def observations(recs: list[dict]) -> list[str]:
    """What the numbers say, computed (differences and whether the intervals overlap)."""
    out = []
    for d in sorted({r["difficulty"] for r in recs if r["table"] == "rerank"}):
        rr = {r["method"]: r for r in recs if r["table"] == "rerank" and r["difficulty"] == d}
        maj = rr.get("majority")
        for m in ("verifier", "prm_min", "prm_last", "logprob"):
            if m in rr and maj:
                diff = rr[m]["correct"] - maj["correct"]
                overlap = rr[m]["ci95"][0] <= maj["ci95"][1] and maj["ci95"][0] <= rr[m]["ci95"][1]
                out.append(f"d{d}: {LABELS[m]} picks a right answer on {rr[m]['correct']}/{rr[m]['n']} problems, "
                           f"{diff:+d} against majority vote ({maj['correct']}); the 95% intervals "
                           f"{'overlap' if overlap else 'do not overlap'}; its within-problem pair AUC is "
                           f"{rr[m].get('pair_auc')} (0.5 = chance).")
        pol = {r["policy"]: r for r in recs if r["table"] == "policy" and r["difficulty"] == d}
        if "base" in pol:
            for m in ("step_dpo", "dpo"):
                if m in pol:
                    g = pol[m]["greedy"]["correct"] - pol["base"]["greedy"]["correct"]
                    s = pol[m]["samples"]["accuracy"] - pol["base"]["samples"]["accuracy"]
                    out.append(f"d{d}: {POLICY_LABELS[m]}: greedy {g:+d} problems against the base, sampled "
                               f"accuracy {s:+.3f}.")
    return out


def markdown(args, recs: list[dict]) -> str:
    meta = next((r for r in recs if r["table"] == "meta"), {})
    timing = next((r for r in recs if r["table"] == "timing"), {})
    lines = ["# Usefulness: does training on treepref's data help?", "",
             f"`{meta.get('command', '')}`", "",
             f"Base policy: `{meta.get('base_model')}` ({args.backend}, CPU). Training problems: "
             f"{args.train_problems} arithmetic problems, difficulty {args.train_difficulty}, seed {args.train_seed}. "
             f"Held-out: {args.heldout_problems} problems per difficulty ({args.heldout_difficulty}), seed "
             f"{args.heldout_seed} (prompts shared with training: {meta.get('heldout_overlap_with_train')}). "
             f"Worked examples matched to the difficulty in every prompt.", ""]
    rr = [r for r in recs if r["table"] == "rerank"]
    for d in sorted({r["difficulty"] for r in rr}):
        rows = {r["method"]: r for r in rr if r["difficulty"] == d}
        any_row = next(iter(rows.values()))
        lines += [f"## Verifier: best-of-{args.n} reranking, difficulty {d}", "",
                  f"{args.n} samples per problem from the base policy (temperature {args.temperature}, top-p 0.95, "
                  f"{any_row['distinct_per_problem']} distinct solutions per problem on average). Accuracy of the "
                  "picked answer [95% Wilson interval] (right/problems); pair AUC: how often the score ranks a right "
                  "sample of a problem above a wrong one (ties half).", "",
                  "| method | accuracy [95% CI] | pair AUC |", "|---|---|---|"]
        for m in ("oracle", "first", "mean_sample", "majority", "logprob", "verifier", "prm_min", "prm_last"):
            if m in rows:
                auc = rows[m].get("pair_auc")
                lines.append(f"| {LABELS[m]} | {fmt_acc(rows[m])} | {'' if auc is None else auc} |")
        lines.append("")
    pol = [r for r in recs if r["table"] == "policy"]
    if pol:
        lines += ["## Policy: held-out accuracy after training", "",
                  f"Greedy: one solution per problem at temperature 0. Sampled: the share of right solutions over "
                  f"{args.policy_samples} samples per problem at temperature {args.temperature} (the base's are the "
                  f"first {args.policy_samples} of its {args.n} reranking samples); its interval counts samples as "
                  "independent, so it is too narrow.", "",
                  "| difficulty | policy | greedy [95% CI] | sampled [95% CI] | any of the samples |",
                  "|---|---|---|---|---|"]
        for r in sorted(pol, key=lambda r: (r["difficulty"], list(POLICY_LABELS).index(r["policy"]))):
            lines.append(f"| {r['difficulty']} | {POLICY_LABELS[r['policy']]} | {fmt_acc(r.get('greedy'))} | "
                         f"{fmt_acc(r.get('samples'))} | {fmt_acc(r.get('any_of_samples'))} |")
        lines.append("")
    data = [r for r in recs if r["table"] == "data"]
    tr = [r for r in recs if r["table"] == "train"]
    if data or tr:
        lines += ["## Training data and runs", "",
                  "| search | token_budget per problem | problems | generated tokens | problems solved |",
                  "|---|---|---|---|---|"]
        for r in data:
            lines.append(f"| {r['source']} | {r.get('token_budget')} | {r['problems']} | {r['generated_tokens']} | "
                         f"{r['solved']} |")
        lines += ["", "| run | method | export | rows available | rows used (problems) | oracle good share | steps | "
                  "train loss | last logged metrics | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in tr:
            q = r.get("oracle_quality")
            last = {k: v for k, v in (r.get("log") or [{}])[-2 if len(r.get("log") or []) > 1 else -1].items()
                    if k not in ("epoch", "grad_norm", "learning_rate", "step")} if r.get("log") else {}
            lines.append(f"| {r['name']} | {r['method']} | {r['export']} | {r['rows_available']} | {r['rows_used']} "
                         f"({r['problems_used']}) | {round(q['good_share'], 3) if q else '-'} | {r.get('steps', '-')} | "
                         f"{round(r['train_loss'], 4) if r.get('train_loss') is not None else '-'} | "
                         f"{json.dumps(last) if last else '-'} | {r.get('seconds', '-')} |")
        lines += ["", f"Training settings: LoRA r={args.lora_r} (alpha {2 * args.lora_r}) on the top "
                  f"{args.lora_layers or 'all'} layers, max_length 1024, seed {args.seed}; "
                  f"step-DPO and DPO: {args.steps} steps of {args.policy_batch} pairs, lr {args.policy_lr}, "
                  f"beta {args.beta}; verifier ({args.verifier_rule}-rule step pairs) and PRM (Monte Carlo labels, "
                  f"{args.prm_labels}): {args.head_steps} steps of {args.head_batch}, lr {args.head_lr}. Rows are "
                  "drawn "
                  "round-robin over problems up to steps x batch; with fewer rows the run cycles them (epochs > 1). "
                  f"Search: MCTS {MCTS} and flat best-of-N "
                  f"(n={args.flat_n}); MCTS token_budget {args.budget} per problem, flat best-of-N {args.flat_budget} "
                  f"(match: MCTS's mean spend per problem); sampling {DEMO_SAMPLING}.", ""]
    if timing:
        lines += ["## Wall time (seconds)", "", "| phase | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in timing.items() if k not in ("table", "load_average_now")]
        start = [round(x, 2) for x in meta.get("load_average_at_start", [])]
        lines += ["", f"Machine load (1/5/15-minute averages, 2 cores) at the start: {start}; at the last save: "
                  f"{timing.get('load_average_now')}. Anything above ~2 means other jobs shared the cores, and every "
                  "time above stretched with it.", ""]
    obs = observations(recs)
    if obs:
        lines += ["## What this shows, and what it does not", ""] + [f"- {o}" for o in obs] + [
            f"- Scale: one seed, {args.train_problems} training problems, "
            f"{args.steps}-{args.head_steps} LoRA steps per model on a 135M model, {args.heldout_problems} held-out "
            "problems: differences "
            "of a few problems are inside the intervals. A result here says whether the pipeline's data moves a "
            "small model in a short run, not what it does at the sizes step-level papers train at.",
            "- The verifier is trained on step pairs (a prefix and two sibling steps) and asked to score whole "
            "solutions at their last token; the PRM reads every step. Both start from the base model's weights "
            "with a fresh head.",
            "- Reruns differ: vLLM on CPU takes no per-request seeds, so what is sampled depends on how requests "
            "were batched (and so on the machine's load); the training data, the held-out samples and every "
            "number above change from run to run of the same command by more than the differences between "
            "methods.", ""]
    return "\n".join(lines)


def held_out(n: int, seed: int, difficulty: int, exclude: set) -> list:
    """``n`` problems whose prompts are not among ``exclude`` (the training prompts) and not repeated: one
    operation has few distinct problems, and a first run shared 39 of its 64 held-out prompts with training."""
    out, seen = [], set(exclude)
    for p in generate(n * 20, seed=seed, difficulty=difficulty):
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
            if len(out) == n:
                break
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Run(args)

    async def go(work: Path):
        await run_all(args, run, work)

    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        asyncio.run(go(Path(args.work)))
    else:
        with tempfile.TemporaryDirectory(prefix="usefulness-") as tmp:
            asyncio.run(go(Path(tmp)))
    run.save()
    print(markdown(args, run.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
