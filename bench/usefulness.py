"""Usefulness (issue 27): do tree-search step pairs train better verifiers and policies than flat samples do, at
the same generated tokens? Tree-PLV's claim, and step-DPO's, on built-in arithmetic.

1. Data (``--train-problems`` problems at ``--difficulty``, seed ``--train-seed``), two searches at the same
   tokens: the tree is ``configs/demo.yaml``'s search, the best setting of ``bench/results/yield.md``
   (best-first with a token budget it spends, shared across problems, the derived step check); flat is
   ``sample`` (whole solutions, 4 a request) with the tree run's mean spend per problem as its budget.
   Exports: the tree's sibling pairs (margin rule, success prefix, judged rejected, checked steps), its Monte
   Carlo step labels (``stepwise``, ``mc``) and its consensus labels (``consensus``: Monte Carlo where the step
   check agrees); flat's outcome labels (``stepwise``, ``outcome``: right / wrong whole solutions) and its
   whole-solution pairs (``trajectory_pairs``).
2. Verifier arms, per seed, each ``--head-steps`` optimizer steps of ``--head-batch`` from the same base with
   LoRA: (a) ``verifier``, pairwise on the tree's pairs (Tree-PLV); (b) ``orm``, an outcome verifier on flat's
   labels, read at the last step (Tree-PLV's baseline); (c) ``prm_mc``, a PRM on the Monte Carlo labels; (d)
   ``prm_consensus``, a PRM on the consensus labels; (c) and (d) read the weakest step. Every arm reads its own
   short prompt (``input: question``: the question, then the steps, no worked examples); the stepwise arms weigh
   their classes alike (``loss.pos_weight: balanced``).
3. Held out, per seed (``--heldout-problems``, seed ``--heldout-seed`` + i, prompts disjoint from training,
   checked): ``--n`` samples a problem from the base; the pick of each verifier against majority vote, the
   base's mean log-prob, the first sample and the oracle (any of N right); each scorer's vote too (majority vote
   weighted by its P(right), as Math-Shepherd combines a PRM with self-consistency); pair AUC; for the stepwise arms
   ProcessBench's first-error score against the exact oracle. The base's greedy accuracy, majority and oracle
   say how much room the setting leaves (the issue asks for greedy in 20-70% and oracle 15 points above
   majority).
4. Policy arms, per seed (``--policy-steps`` steps of ``--policy-batch``): step-DPO on the tree's pairs, DPO on
   flat's whole-solution pairs, and the base, each greedy on the first ``--policy-problems`` held-out problems
   with the hf backend (deterministic).

Reported: every arm per seed, pooled over seeds with Wilson 95% intervals, mean and spread over seeds, and
paired differences (bootstrap 95% over problems) of each verifier against majority vote and the ORM.

    .venv/bin/python bench/usefulness.py                                   # bench/results/usefulness.{md,json}
    .venv/bin/python bench/usefulness.py --train-problems 8 --heldout-problems 4 --policy-problems 2 \\
        --seeds 2 --head-steps 2 --policy-steps 2 --work /tmp/useful-tiny --out /tmp/useful-tiny   # the harness

Everything is cached in ``--work`` (default ``bench/work/usefulness``, ignored by git): a rerun resumes the
searches, reuses trained models and held-out samples, and only redoes what is missing. A policy arm's reference
log-probs are the same for every seed (same data, same base): later seeds start from the first seed's cache, which
the trainer uses only where its key (base model and examples) matches. With ``--backend vllm``
every search runs in this process's engine (spawned on CPU machines, hence the ``__main__`` guard).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import pickle
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

import treepref  # noqa: E402
from treepref.domains.arithmetic import generate as arithmetic_problems  # noqa: E402
from treepref.errors import UserInputError  # noqa: E402
from treepref.extract.api import write_export  # noqa: E402
from treepref.extract.quality import pair_label_quality  # noqa: E402
from treepref.models import resolve_model  # noqa: E402
from treepref.train import evaluate as ev  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the tree's pairs: bench/results/yield.md's best export (configs/demo.yaml's)
PAIRS = {"rule": "margin", "exact_rejected": "judged", "checked_steps": True}
EXPORTS = {  # name: (search, format, export settings)
    "tree-pairs": ("tree", "step_pairs", PAIRS),
    "tree-mc": ("tree", "stepwise", {"value": "mc"}),
    "tree-consensus": ("tree", "stepwise", {"value": "consensus"}),
    "flat-outcome": ("flat", "stepwise", {"value": "outcome"}),
    "flat-trajectories": ("flat", "trajectory_pairs", {}),
}
# the stepwise heads: hard labels, classes weighed alike (a weak policy's labels are 75-92% negative; unweighted, the
# 2026-12-06 run's heads scored every step under 0.5; balanced, they rank no better: bench/README.md)
STEPWISE = {"loss.labels": "hard", "loss.pos_weight": "balanced"}
VERIFIERS = {  # name: (training recipe, export, overrides, how a solution's step scores become one)
    "verifier": ("train-verifier.yaml", "tree-pairs", {"format": "step_pairs", "input": "question"}, None),
    "orm": ("train-prm.yaml", "flat-outcome", {"input": "question", **STEPWISE}, "last"),
    "prm_mc": ("train-prm.yaml", "tree-mc", {"input": "question", **STEPWISE}, "min"),
    "prm_consensus": ("train-prm.yaml", "tree-consensus", {"input": "question", **STEPWISE}, "min"),
}
POLICIES = {"step_dpo": ("tree-pairs", "step_pairs"), "dpo": ("flat-trajectories", "trajectory_pairs")}
REFERENCES = ("oracle", "first", "majority", "logprob")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"], help="generation backend")
    ap.add_argument("--difficulty", type=int, default=2)
    ap.add_argument("--train-problems", type=int, default=64)
    ap.add_argument("--train-seed", type=int, default=100)
    ap.add_argument("--budget", type=int, default=400, help="tokens a training problem (the tree's token_budget)")
    ap.add_argument("--heldout-problems", type=int, default=64)
    ap.add_argument("--heldout-seed", type=int, default=999)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds, each with its own held-out set")
    ap.add_argument("--n", type=int, default=8, help="samples a held-out problem (best-of-N)")
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--head-steps", type=int, default=40, help="optimizer steps of every verifier arm")
    ap.add_argument("--head-batch", type=int, default=8)
    ap.add_argument("--head-lr", type=float, default=5e-4)
    ap.add_argument("--policy-steps", type=int, default=30, help="optimizer steps of step-DPO and DPO")
    ap.add_argument("--policy-batch", type=int, default=4)
    ap.add_argument("--policy-lr", type=float, default=1e-4)
    ap.add_argument("--policy-problems", type=int, default=32, help="held-out problems each policy solves greedily")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-layers", type=int, default=8, help="LoRA on the top this many layers (0: all)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--work", default=str(Path(__file__).parent / "work" / "usefulness"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "usefulness"))
    return ap.parse_args(argv)


# -- shared with bench/pav.py --------------------------------------------------------------------------------------
def held_out(n: int, seed: int, difficulty: int, exclude: set) -> list:
    """``n`` problems whose prompts are not among ``exclude`` (the training prompts) and not repeated: one
    operation has few distinct problems, and a first run shared 39 of its 64 held-out prompts with training."""
    out, seen = [], set(exclude)
    for p in arithmetic_problems(n * 20, seed=seed, difficulty=difficulty):
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
            if len(out) == n:
                break
    return out


def lora_options(args, model_dir: str) -> dict:
    """LoRA of rank ``--lora-r`` on the attention and MLP projections of the top ``--lora-layers`` layers."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    layers = int(cfg["num_hidden_layers"])
    opts = {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0}
    if args.lora_layers and args.lora_layers < layers:
        top = "|".join(str(i) for i in range(layers - args.lora_layers, layers))
        opts["target_modules"] = rf".*\.layers\.({top})\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    return opts


def paired_difference(a: list[bool], b: list[bool], n_boot: int, rng: random.Random) -> dict:
    """Accuracy of ``a`` minus ``b`` on the same problems, with a bootstrap 95% interval over problems."""
    n = len(a)
    diffs = [int(x) - int(y) for x, y in zip(a, b)]
    boots = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return {"difference": sum(diffs) / n, "ci95": [boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]]}


# -- phases ----------------------------------------------------------------------------------------------------------
class Work:
    """The work folder: phase timings (a cached phase keeps the time it took when it ran) and cached values."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.timing_file = folder / "timing.json"
        self.first = json.loads(self.timing_file.read_text()) if self.timing_file.exists() else {}
        self.timing: dict[str, float] = {}

    def phase(self, name: str, fn):
        t = time.time()
        value = fn()
        self.timing[name] = self.first.setdefault(name, round(time.time() - t, 1))
        atomic_write_text(self.timing_file, json.dumps(self.first, indent=1))
        return value

    def cached(self, name: str, fn):
        """``fn()``, pickled under ``name`` the first time and read back after."""
        path = self.folder / f"{name}.pkl"
        if path.exists():
            return pickle.loads(path.read_bytes())
        value = fn()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(value))
        tmp.replace(path)
        return value


def recipe(args, count: int, search: dict, output: Path) -> dict:
    """configs/demo.yaml (the yield bench's best setting) on ``count`` training problems, with ``search``."""
    demo = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    d = args.difficulty
    model = {"name": None, "backend": args.backend}
    if args.backend == "vllm":
        model["options"] = {"max_model_len": 2048, "cpu_kv_cache_gib": 2}
    return {**demo, "model": model,
            "problems": {"source": "arithmetic",
                         "options": {"count": count, "seed": args.train_seed, "difficulty": d}},
            "env": {**demo["env"], "max_depth": d + 3, "few_shot": f"arithmetic:{d}"},
            "search": search, "extract": {"formats": ["trees"]},
            "run": {**demo["run"], "output": str(output)}}


def training_data(args, work: Work) -> tuple[dict, dict]:
    """Both searches' trees, and the exports each arm trains on (written under ``work/exports``)."""
    demo = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    tree_search = {**demo["search"], "options": {**demo["search"]["options"], "token_budget": args.budget}}
    trees = {"tree": work.phase("search: tree", lambda: sorted(
        treepref.generate(recipe(args, args.train_problems, tree_search, work.folder / "tree"),
                          allow_failures=False).trees(), key=lambda t: t.problem_id))}
    spent = sum(t.meta.get("generated_tokens", 0) for t in trees["tree"]) / max(len(trees["tree"]), 1)
    flat_search = {"name": "sample", "options": {"n": 4, "token_budget": max(1, math.ceil(spent))}}
    trees["flat"] = work.phase("search: flat", lambda: sorted(
        treepref.generate(recipe(args, args.train_problems, flat_search, work.folder / "flat"),
                          allow_failures=False).trees(), key=lambda t: t.problem_id))
    stats = {}
    for name, (source, fmt, settings) in EXPORTS.items():
        stats[name] = write_export(trees[source], work.folder / "exports" / name, fmt, **settings)
    return trees, stats


def train_arm(args, work: Work, name: str, config: str, data: str, seed: int, steps: int, batch: int, lr: float,
              overrides: dict) -> dict:
    """A trained model (reused when its folder holds one) and its summary."""
    out = work.folder / "models" / f"{name}-{seed}"
    summary_path = out / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    shared = sorted((work.folder / "models").glob(f"{name}-*/reference_logps.json"))
    if shared and not (out / "reference_logps.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared[0], out / "reference_logps.json")
    try:
        return treepref.train(CONFIGS / config, out, overrides={
            "data": str(work.folder / "exports" / data), "resume": False, "train.max_steps": steps,
            "train.batch_size": batch, "train.learning_rate": lr, "train.seed": seed, "train.progress": False,
            "train.logging_steps": max(1, steps // 4), "train.lora": lora_options(args, resolve_model()),
            **overrides})
    except UserInputError as exc:  # data that cannot train this arm (a small run: no pair, one class of label)
        print(f"{name}: skipped: {exc}", file=sys.stderr)
        return {"skipped": str(exc)}


def held_out_samples(args, work: Work, problems: list, seed: int) -> dict:
    """The base's ``--n`` samples and greedy solution of each held-out problem (cached)."""
    return work.cached(f"heldout-{seed}/samples", lambda: asyncio.run(ev.evaluate(
        None, problems=problems, n=args.n, backend=args.backend, temperature=args.temperature, seed=seed,
        backend_options={"max_model_len": 2048} if args.backend == "vllm" else {}, keep_solutions=True)))


async def greedy_accuracy(model: str | None, problems: list) -> dict:
    """A policy's greedy accuracy on ``problems`` with the hf backend (deterministic), with its Wilson interval."""
    from treepref.backends import make_policy
    from treepref.backends.base import Sampling

    policy = make_policy("hf", model, dtype="float32")
    try:
        env = ev.default_env(policy, problems)
        sols = await ev.sample_solutions(policy, env, problems, n=1, sampling=Sampling(temperature=0.0))
    finally:
        policy.close()
    return ev.accuracy(sum(bool(s) and s[0].correct for s in sols), len(sols))


def train_facts(summary: dict) -> dict:
    """What the report says of one trained arm: its data, steps, loss and speed."""
    runtime = next((r["train_runtime"] for r in reversed(summary.get("log") or []) if "train_runtime" in r), None)
    steps = summary.get("steps")
    return {**{f: summary.get(f) for f in ("examples", "steps", "train_loss", "dropped_too_long", "pos_weight",
                                           "skipped")},
            "steps_per_s": round(steps / runtime, 3) if steps and runtime else None}


def verifier_scores(samples, summaries: dict) -> tuple[dict, dict]:
    """Each verifier arm's score of every held-out solution, and the stepwise arms' step scores (cached by the
    caller, so a new threshold or aggregate needs no rescoring)."""
    from treepref.verifiers.trained import load_trained

    scores, steps = {}, {}
    for name, summary in summaries.items():
        scorer = load_trained(summary["model"])
        how = VERIFIERS[name][3]
        if how is None:
            scores[name] = ev.verifier_scores(scorer, samples)
        else:
            steps[name] = ev.prm_step_scores(scorer, samples)
            scores[name] = ev.aggregate(steps[name], how)
        del scorer
    return scores, steps


def chosen_by(samples, scores: dict) -> dict:
    """Each method's pick of each problem (None where there is nothing to pick): the first sample, majority vote,
    each scorer's top solution, and (``<scorer>_vote``) majority vote weighted by each scorer."""
    chosen = {"first": [sols[0] if sols else None for sols in samples], "majority": list(map(ev.majority, samples))}
    chosen.update({name: [ev.by_score(s, v) for s, v in zip(samples, sc)] for name, sc in scores.items()})
    chosen.update({f"{name}_vote": list(map(ev.weighted_majority, samples, ws))
                   for name, ws in ev.scorer_votes(scores).items()})
    return chosen


def verifier_picks(problems, samples, chosen: dict, scores: dict, steps: dict) -> tuple[dict, dict, dict]:
    """Per method, whether its pick of each problem was right (``chosen``: :func:`chosen_by`); pair AUCs; the
    stepwise arms' first-error cases (their step scores beside the oracle's first wrong step)."""
    picks = {"oracle": [any(s.correct for s in sols) for sols in samples],
             **{name: [bool(p and p.correct) for p in ps] for name, ps in chosen.items()}}
    aucs = {name: ev.pair_auc(samples, sc) for name, sc in scores.items()}
    return picks, aucs, {name: ev.first_error_cases(problems, samples, st) for name, st in steps.items()}


def pick_steps(samples, chosen: dict) -> dict:
    """The mean number of steps in each method's pick, and in the right solutions: a scorer's taste in length (a
    short arithmetic solution merges operations into one step)."""
    groups = {**{name: [p for p in ps if p] for name, ps in chosen.items()},
              "right solutions": [s for sols in samples for s in sols if s.correct]}
    return {name: statistics.fmean(len(p.steps) for p in ps) if ps else None for name, ps in groups.items()}


# -- the run ---------------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Work(Path(args.work))
    trees, export_stats = training_data(args, work)
    train_prompts = {t.prompt for t in trees["tree"]} | {t.prompt for t in trees["flat"]}
    by_id = {p.id: p for p in arithmetic_problems(args.train_problems, seed=args.train_seed,
                                                   difficulty=args.difficulty)}
    data = {name: {"rows": stats.get("rows"), "filters": stats.get("filters"), "dropped": stats.get("dropped"),
                   "label_quality": stats.get("label_quality")} for name, stats in export_stats.items()}
    pairs = [json.loads(line) for line in (work.folder / "exports" / "tree-pairs" / "rows.jsonl").read_text()
             .splitlines() if line.strip()]
    data["tree-pairs"]["oracle"] = {k: v for k, v in pair_label_quality(pairs, by_id).items()
                                    if k in ("pairs", "good", "good_share", "problems_with_good")}
    for source in ("tree", "flat"):
        data[source] = {"problems": len(trees[source]),
                        "generated_tokens": sum(t.meta.get("generated_tokens", 0) for t in trees[source])}

    per_seed, pooled, thresholds = [], {}, {}
    policy = {arm: [] for arm in ("base", *POLICIES)}
    for i in range(args.seeds):
        seed = i
        problems = held_out(args.heldout_problems, args.heldout_seed + i, args.difficulty, train_prompts)
        assert not train_prompts & {p.prompt for p in problems}, "held-out prompts must not repeat training ones"
        summaries = {name: work.phase(f"train {name} {seed}", lambda name=name, v=v: train_arm(
            args, work, name, v[0], v[1], seed, args.head_steps, args.head_batch, args.head_lr, v[2]))
                     for name, v in VERIFIERS.items()}
        trained = {name: s for name, s in summaries.items() if "model" in s}  # a skipped arm is reported, not scored
        report = work.phase(f"held-out samples {seed}", lambda: held_out_samples(args, work, problems, seed))
        samples = report["solutions"]["samples"]
        scores, steps = work.phase(f"verifier scores {seed}", lambda: work.cached(
            f"heldout-{seed}/scores-{'-'.join(trained)}", lambda: verifier_scores(samples, trained)))
        ranked = {"logprob": ev.logprob_scores(samples), **scores}  # the base's own log-prob beside the arms
        chosen = chosen_by(samples, ranked)
        picks, aucs, cases = verifier_picks(problems, samples, chosen, ranked, steps)
        # ProcessBench's score at 0.5, and at the threshold fitted on the first seed (in-sample there)
        for name, c in cases.items():
            thresholds.setdefault(name, ev.fit_threshold(c))
        first_errors = {name: ev.first_error_at(c, 0.5) for name, c in cases.items()}
        fitted = {name: {**ev.first_error_at(c, thresholds[name]), "in_sample": i == 0} for name, c in cases.items()}
        for name, oks in picks.items():
            pooled.setdefault(name, []).extend(oks)
        base_greedy = report["policy"]["greedy"]
        per_seed.append({"seed": seed, "heldout_seed": args.heldout_seed + i, "problems": len(problems),
                         "accuracy": {k: sum(v) / len(v) for k, v in picks.items()}, "pair_auc": aucs,
                         "first_error": first_errors, "first_error_fitted": fitted, "base_greedy": base_greedy,
                         "pick_steps": pick_steps(samples, chosen),
                         "train": {k: train_facts(s) for k, s in summaries.items()}})
        # policies: greedy on the first --policy-problems held-out problems, hf (deterministic)
        subset = problems[:args.policy_problems]
        for arm in ("base", *POLICIES):
            tuned = {}  # the phases side by side, not nested, so their times add up to the run's
            if arm != "base":
                export, fmt = POLICIES[arm]
                tuned = work.phase(f"train {arm} {seed}", lambda arm=arm, export=export, fmt=fmt: train_arm(
                    args, work, arm, "train-step-dpo.yaml", export, seed, args.policy_steps, args.policy_batch,
                    args.policy_lr, {"format": fmt}))
                if "skipped" in tuned:
                    policy[arm].append({"seed": seed, "skipped": tuned["skipped"]})
                    continue
            greedy = work.phase(f"policy {arm} {seed}", lambda arm=arm, model=tuned.get("model"): work.cached(
                f"policy/{arm}-{seed}", lambda: asyncio.run(greedy_accuracy(model, subset))))
            policy[arm].append({"seed": seed, **greedy, **({"train": train_facts(tuned)} if tuned else {})})

    rng = random.Random(0)
    table = []
    for name, oks in pooled.items():
        seeds = [s["accuracy"][name] for s in per_seed]
        row = {"method": name, **ev.accuracy(sum(oks), len(oks)), "per_seed": seeds,
               "seed_mean": statistics.fmean(seeds), "seed_spread": [min(seeds), max(seeds)]}
        for other in ("majority", "orm"):
            if other != name and other in pooled:
                row[f"minus_{other}"] = paired_difference(oks, pooled[other], args.bootstrap, rng)
        table.append(row)
    result = {"table": table, "per_seed": per_seed, "policy": policy, "data": data,
              "timing_s": {**work.timing, "total": round(sum(work.timing.values()), 1)},
              "meta": {"command": "python bench/usefulness.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "args": vars(args), "machine": platform.platform(), "date": time.strftime("%Y-%m-%d")}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1, default=str))
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return result


# -- the report ------------------------------------------------------------------------------------------------------
LABELS = {"oracle": "oracle (any of N right)", "first": "first sample", "majority": "majority vote",
          "logprob": "base mean token log-prob", "verifier": "(a) pairwise verifier on the tree's step pairs",
          "orm": "(b) ORM on flat's outcome labels", "prm_mc": "(c) PRM on the tree's Monte Carlo labels",
          "prm_consensus": "(d) PRM on the tree's consensus labels"}


def label(name: str) -> str:
    return f"{LABELS[name[:-5]]}, weighted vote" if name.endswith("_vote") else LABELS.get(name, name)


def _ci(a: dict) -> str:
    return f"{a['accuracy']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] ({a['correct']}/{a['n']})"


def _diff(d: dict | None) -> str:
    return "-" if not d else f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def _share(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _of(score: dict | None, share: str, count: str) -> str:
    return "-" if not score else f"{_share(score[share])} of {score[count]}"


def _greedy(r: dict) -> str:
    return "skipped" if "skipped" in r else f"{r['correct']}/{r['n']}"


def markdown(result: dict) -> str:
    meta, a = result["meta"], result["meta"]["args"]
    lines = [f"# Usefulness: tree step pairs vs flat samples at the same tokens ({meta['date']})", "",
             f"`{meta['command']}` on {meta['machine']}; {result['timing_s']['total'] / 60:.1f} min.", "",
             f"Arithmetic at difficulty {a['difficulty']}: {a['train_problems']} training problems (seed "
             f"{a['train_seed']}), {a['seeds']} seeds, each a training seed and {a['heldout_problems']} held-out "
             f"problems (seed {a['heldout_seed']} + i, disjoint from training); best-of-{a['n']} from the base at "
             f"temperature {a['temperature']}. Verifier arms: {a['head_steps']} steps of {a['head_batch']}, lr "
             f"{a['head_lr']}; policies: {a['policy_steps']} steps of {a['policy_batch']}, lr {a['policy_lr']}; "
             f"LoRA r={a['lora_r']} on the top {a['lora_layers'] or 'all'} layers.", "",
             "## Best-of-N: each method's pick, pooled over seeds", "",
             "| method | accuracy [95%] | per seed | minus majority [95%] | minus ORM [95%] | pair AUC (per seed) |",
             "|---|---|---|---|---|---|"]
    for r in result["table"]:
        aucs = [s["pair_auc"].get(r["method"]) for s in result["per_seed"]]
        lines.append(f"| {label(r['method'])} | {_ci(r)} | "
                     f"{', '.join(f'{x:.3f}' for x in r['per_seed'])} | {_diff(r.get('minus_majority'))} | "
                     f"{_diff(r.get('minus_orm'))} | "
                     f"{', '.join('-' if x is None else f'{x:.3f}' for x in aucs) if any(aucs) else '-'} |")
    steps = [s.get("pick_steps") or {} for s in result["per_seed"]]
    lines += ["", "Steps in each method's pick, mean per seed (right solutions for reference): " + "; ".join(
        f"{label(name)} " + ", ".join("-" if st.get(name) is None else f"{st[name]:.2f}" for st in steps)
        for name in steps[0]) + "."]
    lines += ["", "## First wrong step (ProcessBench's score against the exact oracle), per seed", "",
              "At the threshold 0.5, and at the threshold that gives the best F1 on the first seed (in-sample there, "
              "held out on the others), as ProcessBench fits a PRM's threshold on one split.", "",
              "| arm | found (solutions with an error) | passed (solutions without) | F1 | fitted threshold | "
              "F1 at it |", "|---|---|---|---|---|---|"]
    for name in ("orm", "prm_mc", "prm_consensus"):
        got = [s["first_error"].get(name) for s in result["per_seed"]]
        fitted = [(s.get("first_error_fitted") or {}).get(name) for s in result["per_seed"]]
        if any(got):
            lines.append(f"| {LABELS[name]} | {', '.join(_of(g, 'error_accuracy', 'n_error') for g in got)} | "
                         f"{', '.join(_of(g, 'correct_accuracy', 'n_correct') for g in got)} | "
                         f"{', '.join(_share(g and g['f1']) for g in got)} | "
                         f"{_share(fitted[0] and fitted[0]['threshold'])} | "
                         f"{', '.join(_share(g and g['f1']) for g in fitted)} |")
    lines += ["", "## Policies: greedy on held-out problems (hf), per seed", "", "| policy | right per seed |",
              "|---|---|"]
    for arm, rows in result["policy"].items():
        lines.append(f"| {arm} | {', '.join(map(_greedy, rows))} |")
    trained = {name: [s["train"].get(name) or {} for s in result["per_seed"]] for name in VERIFIERS}
    trained.update({arm: [r.get("train") or {} for r in rows] for arm, rows in result["policy"].items()
                    if arm != "base"})
    lines += ["", "## Training, per seed", "", "| arm | examples | optimizer steps | steps per second | final loss | "
              "positive weight |", "|---|---|---|---|---|---|"]
    for name, facts in trained.items():
        cells = [", ".join("-" if f.get(k) is None else f"{f[k]:.3g}" for f in facts)
                 for k in ("examples", "steps", "steps_per_s", "train_loss", "pos_weight")]
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    skipped = {name: f["skipped"] for name, facts in trained.items() for f in facts if f.get("skipped")}
    if skipped:
        lines += [""] + [f"Skipped: {label(name)}: {why}" for name, why in skipped.items()]
    head = [s["base_greedy"] for s in result["per_seed"]]
    lines += ["", "## Room above the base", "",
              "Base greedy per seed: " + ", ".join(f"{g['correct']}/{g['n']}" for g in head) + "; majority and "
              "oracle are in the first table.", "", "## Data", "", "```json", json.dumps(result["data"], indent=1),
              "```", "", "Time per phase (s; a phase cached in `--work` keeps the time it took when it ran): "
              + ", ".join(f"{k} {v}" for k, v in result["timing_s"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
