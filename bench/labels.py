"""Label quality of Monte Carlo (Math-Shepherd) and OmegaPRM step labels on built-in arithmetic.

Sample solutions with the real model, label every step with N completions (hard: any correct, soft:
share correct) and with OmegaPRM's binary search, and compare with the exact step checker.

The checker and the MC labels answer different questions. ``check_step`` asks "is this step's own
arithmetic right?"; an MC label asks "can this policy still reach the reference answer from here?". They
disagree when a right step is followed by completions that all go wrong (a weak policy: label False, check
True), and when a wrong step is "rescued" by a completion that recomputes the answer (label True, check
False). So we also report agreement with the *prefix* check (every checkable step so far right), which is
what an MC label estimates when the policy is strong.

Two yardsticks, each with its base rate, confusion matrix and the AUC of the soft label: "arithmetic"
(``check_step``: the step's own equations hold) and "on track" (``on_track``: they hold *and* are steps of
this problem's solution, so ``13 * 3 = 39`` for "Compute 13 + 3" is right arithmetic but off track). The
second is the ground truth an MC label is estimating; the first over-counts right steps.

    python bench/labels.py --problems 6 --paths 2 --n 8      # writes bench/results/labels.{json,md}
    python bench/labels.py --backend vllm --difficulty 1,2 --few-shot none,arithmetic,matched --problems 20 \\
        --paths 4 --n 8 --rollout-tokens 128 --cpu-kv-gib 2

``--few-shot`` lists prompt settings compared in the same run: ``none`` (the instruction alone),
``matched`` (three worked examples with as many operations as the problems, ``arithmetic:<difficulty>``)
or any ``env.few_shot`` value such as ``arithmetic`` (a mixed-length set); the examples go before every
problem, for sampling and for the completions alike.

With ``--backend vllm`` the engine runs in a spawned process on CPU machines (hence the ``__main__`` guard)
and one policy serves one event loop, so every difficulty runs inside a single ``asyncio.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treepref.backends import make_policy  # noqa: E402
from treepref.backends.base import Sampling  # noqa: E402
from treepref.domains.arithmetic import check_step, generate, on_track  # noqa: E402
from treepref.envs.reasoning import ReasoningEnv  # noqa: E402
from treepref.few_shot import load_shots  # noqa: E402
from treepref.search.base import SearchContext  # noqa: E402
from treepref.tree import ROOT, Tree, atomic_write_text  # noqa: E402
from treepref.search.math_shepherd import add_path, label_path  # noqa: E402
from treepref.search.omegaprm import find_first_error  # noqa: E402


def new_tree(problem, recipe):
    return Tree(problem_id=problem.id, prompt=problem.prompt, answer=problem.answer, meta={"recipe": recipe})


async def sample_solutions(problems, ctx, paths):
    params = ctx.sampling.with_(n=paths, stop=(), max_tokens=ctx.rollout_max_tokens)
    prompts = [ctx.env.render(ctx.env.initial(p)) for p in problems]
    outs = await ctx.policy.generate(prompts, params)
    return [[[ctx.env.clean(p.text) for p in ctx.env.split(c.text, c.token_ids, c.token_logprobs, c.logprob)
              ][: ctx.env.max_depth] for c in cs] for cs in outs]


def ratio(num, den):
    return round(num / den, 4) if den else None


def auc(records, score, ref):
    """Probability that a random ref-True step gets a higher ``score`` than a random ref-False one (ties
    count half): threshold-free separation, 0.5 is chance. None without both classes."""
    pos = [r[score] for r in records if r[score] is not None and r[ref] is True]
    neg = [r[score] for r in records if r[score] is not None and r[ref] is False]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return round(wins / (len(pos) * len(neg)), 4)


YARDSTICKS = {"arithmetic": ("exact", "prefix_exact"), "on_track": ("on_track", "prefix_on_track")}


def build_policy(args):
    if args.backend == "vllm":
        return make_policy("vllm", args.model, seed=args.seed, cpu_kv_cache_gib=args.cpu_kv_gib)
    if args.backend == "hf":
        return make_policy("hf", args.model, num_threads=args.threads, seed=args.seed)
    return make_policy(args.backend, args.model)


async def main(args, on_progress=None) -> dict:
    """Every difficulty in one event loop, on one policy (a VLLMPolicy serves one loop).

    ``on_progress(result)`` is called after each run (difficulty and prompt setting) with the results so far,
    to save them early.
    """
    settings = {k: v for k, v in vars(args).items() if k not in ("difficulties", "prompts")}
    res = {"settings": settings,
           "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count()},
           "total_seconds": None, "runs": {}}
    t0 = time.perf_counter()
    policy = build_policy(args)
    try:
        for d in args.difficulties:
            for prompt in args.prompts:
                print(f"-- difficulty {d}, few-shot {prompt}", file=sys.stderr, flush=True)
                res["runs"][run_label(d, prompt)] = await run_difficulty(policy, d, prompt, args)
                res["total_seconds"] = round(time.perf_counter() - t0, 1)
                if on_progress is not None:
                    on_progress(res)
    finally:
        if hasattr(policy, "close"):
            policy.close()
    return res


def save(res: dict, out: str) -> None:
    atomic_write_text(out + ".json", json.dumps(res, indent=2, ensure_ascii=False))
    atomic_write_text(out + ".md", markdown(res))


def shots_for(difficulty: int, prompt: str) -> str | None:
    """``none``: no examples; ``matched``: worked examples of the same length (``arithmetic:<d>``); else
    any ``env.few_shot`` value."""
    return {"none": None, "matched": f"arithmetic:{difficulty}"}.get(prompt, prompt)


def run_label(difficulty: int, prompt: str) -> str:
    shots = shots_for(difficulty, prompt)
    return f"d{difficulty}, " + ("zero-shot" if shots is None else f"few-shot {shots}")


async def run_difficulty(policy, difficulty: int, prompt: str, args) -> dict:
    problems = generate(args.problems, seed=args.seed, difficulty=difficulty)
    tokens_start = policy.stats.generated_tokens
    env = ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=args.max_depth,
                       max_tokens=args.rollout_tokens,
                       few_shot=load_shots(shots_for(difficulty, prompt), "--few-shot"))
    ctx = SearchContext(env=env, policy=policy, sampling=Sampling(temperature=args.temperature, max_tokens=64),
                        rollout_max_tokens=args.rollout_tokens)
    t0 = time.perf_counter()
    solutions = await sample_solutions(problems, ctx, args.paths)
    sample_tokens = policy.stats.generated_tokens - tokens_start
    print(f"sampled {sum(map(len, solutions))} solutions, {sample_tokens} tokens, {time.perf_counter() - t0:.0f}s",
          file=sys.stderr, flush=True)

    # Math-Shepherd: N completions from every prefix, every problem at once (the backend batches them).
    mc_trees, mc_paths, mc_states = [], [], []
    for p, sols in zip(problems, solutions):
        tree, states = new_tree(p, "math-shepherd"), {ROOT: env.initial(p)}
        paths = [await add_path(tree, states, s, ctx) for s in sols if s]
        mc_trees.append(tree), mc_paths.append(paths), mc_states.append(states)
    t1 = time.perf_counter()
    # Each node once, even where two solutions share a prefix.
    await asyncio.gather(*(label_path(t, st, sorted({i for path in paths for i in path}), ctx, args.n)
                           for t, st, paths in zip(mc_trees, mc_states, mc_paths)))
    mc_tokens = policy.stats.generated_tokens - tokens_start - sample_tokens
    t2 = time.perf_counter()
    print(f"MC labels: {mc_tokens} tokens, {t2 - t1:.0f}s", file=sys.stderr, flush=True)

    # OmegaPRM on fresh trees (no reuse of the MC counts), so its cost is its own.
    om_trees, om_paths, om_results = [], [], []
    jobs = []
    for p, sols in zip(problems, solutions):
        tree, states = new_tree(p, "omegaprm"), {ROOT: env.initial(p)}
        paths = [await add_path(tree, states, s, ctx) for s in sols if s]
        om_trees.append(tree), om_paths.append(paths)
        jobs += [(tree, states, path) for path in paths]
    before = policy.stats.generated_tokens
    om_results = await asyncio.gather(*(find_first_error(t, st, path, ctx, n=args.n, budget=args.budget)
                                        for t, st, path in jobs))
    om_tokens = policy.stats.generated_tokens - before
    t3 = time.perf_counter()
    print(f"OmegaPRM: {om_tokens} tokens, {t3 - t2:.0f}s", file=sys.stderr, flush=True)

    # -- agreement with the exact checker ------------------------------------------------------------
    steps = []  # one record per labelled step
    for p, tree, paths in zip(problems, mc_trees, mc_paths):
        for path in paths:
            prefix_ok = prefix_track = True
            for k, node in enumerate(path):
                exact = check_step(p, tree.text[node])
                track = on_track(p, tree.text[node])
                if exact is False:
                    prefix_ok = False
                if track is False:
                    prefix_track = False
                total = tree.mc_total[node]
                steps.append({"problem": p.id, "step": k, "text": tree.text[node], "exact": exact,
                              "prefix_exact": prefix_ok if exact is not None else None,
                              "on_track": track, "prefix_on_track": prefix_track if track is not None else None,
                              "hard": tree.mc_correct[node] > 0 if total else None,
                              "soft": tree.mc_correct[node] / total if total else None,
                              "final": tree.is_final(node)})
    om_steps = []
    for (tree, _, path), res in zip(jobs, om_results):
        p = next(q for q in problems if q.id == tree.problem_id)
        for node, lab in zip(path, res.labels):
            om_steps.append({"exact": check_step(p, tree.text[node]), "on_track": on_track(p, tree.text[node]),
                             "label": lab})

    def agree(records, key, ref):
        pairs = [(r[key], r[ref]) for r in records if r[key] is not None and r[ref] is not None]
        return ratio(sum(a == b for a, b in pairs), len(pairs)), len(pairs)

    hard_step, n_checked = agree(steps, "hard", "exact")
    hard_prefix, _ = agree(steps, "hard", "prefix_exact")
    for r in steps:
        r["soft_ge_half"] = None if r["soft"] is None else r["soft"] >= 0.5
    soft_step, _ = agree(steps, "soft_ge_half", "exact")
    om_agree, om_checked = agree(om_steps, "label", "exact")
    checked = [r for r in steps if r["exact"] is not None and r["hard"] is not None]
    confusion = {f"exact_{e}_mc_{h}": sum(1 for r in checked if r["exact"] == e and r["hard"] == h)
                 for e in (True, False) for h in (True, False)}
    soft_right = [r["soft"] for r in checked if r["exact"]]
    soft_wrong = [r["soft"] for r in checked if not r["exact"]]
    yardsticks = {}
    for name, (ref, prefix_ref) in YARDSTICKS.items():
        judged = [r for r in steps if r[ref] is not None and r["hard"] is not None]
        hard, n = agree(steps, "hard", ref)
        right = [r["soft"] for r in judged if r[ref]]
        wrong = [r["soft"] for r in judged if not r[ref]]
        yardsticks[name] = {
            "steps_compared": n,
            "base_rate_right": ratio(len(right), len(judged)),
            "mc_hard": hard,
            "mc_hard_vs_prefix": agree(steps, "hard", prefix_ref)[0],
            "mc_soft_ge_0.5": agree(steps, "soft_ge_half", ref)[0],
            "mc_soft_auc": auc(judged, "soft", ref),
            "omegaprm": agree(om_steps, "label", ref)[0],
            "always_right": ratio(len(right), len(judged)),
            "always_wrong": ratio(len(wrong), len(judged)),
            "confusion": {f"{name}_{e}_mc_{h}": sum(1 for r in judged if r[ref] == e and r["hard"] == h)
                          for e in (True, False) for h in (True, False)},
            "mc_soft_mean_when_right": ratio(sum(right), len(right)),
            "mc_soft_mean_when_wrong": ratio(sum(wrong), len(wrong)),
            "goal_hard_agreement_0.9_met": hard is not None and hard >= 0.9,
        }
    n_mc_labels = sum(1 for r in steps if r["hard"] is not None)
    n_om_labels = sum(1 for r in om_steps if r["label"] is not None)
    n_paths = sum(len(x) for x in mc_paths)
    result = {
        "difficulty": difficulty, "few_shot": shots_for(difficulty, prompt),
        "problems": len(problems), "paths": n_paths,
        "steps_labelled_mc": n_mc_labels, "steps_checkable": n_checked,
        "final_answer_accuracy": ratio(sum(1 for r in steps if r["final"] and r["hard"]),
                                       sum(1 for r in steps if r["final"])),
        "mc_hard_vs_step_check": hard_step,
        "mc_hard_vs_prefix_check": hard_prefix,
        "mc_soft_ge_0.5_vs_step_check": soft_step,
        "mc_confusion_vs_step_check": confusion,
        "mc_soft_mean_when_step_right": ratio(sum(soft_right), len(soft_right)),
        "mc_soft_mean_when_step_wrong": ratio(sum(soft_wrong), len(soft_wrong)),
        "omegaprm_vs_step_check": om_agree, "omegaprm_steps_checkable": om_checked,
        "omegaprm_steps_labelled": n_om_labels,
        "omegaprm_rollouts": sum(r.rollouts for r in om_results),
        "omegaprm_incomplete_paths": sum(1 for r in om_results if not r.complete),
        "tokens": {"sampling_solutions": sample_tokens, "mc": mc_tokens, "omegaprm": om_tokens,
                   "mc_per_label": ratio(mc_tokens, n_mc_labels), "omegaprm_per_label": ratio(om_tokens, n_om_labels)},
        "seconds": {"sampling": round(t1 - t0, 1), "mc": round(t2 - t1, 1), "omegaprm": round(t3 - t2, 1)},
        # A labeller that says "wrong" for every step: the base rate the agreements should be read against.
        "always_wrong_baseline": ratio(sum(1 for r in checked if not r["exact"]), len(checked)),
        "goal_hard_agreement_0.9_met": hard_step is not None and hard_step >= 0.9,
        "yardsticks": yardsticks,
        # arithmetic right but off track: the steps the two yardsticks disagree on
        "right_but_off_track": sum(1 for r in steps if r["exact"] is True and r["on_track"] is False),
        "examples": [{k: v for k, v in r.items() if k != "soft_ge_half"} for r in steps[:12]],
    }
    return result


# Settings the rendered command line shows only when a run changed them.
NON_DEFAULTS = {"seed": 0, "temperature": 0.8, "max_depth": 6, "budget": None}


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [
        "# Step-label quality on built-in arithmetic",
        "",
        f"`python bench/labels.py --backend {s['backend']} --difficulty {s['difficulty']} "
        f"--few-shot {s['few_shot']} --problems {s['problems']} "
        f"--paths {s['paths']} --n {s['n']} --rollout-tokens {s['rollout_tokens']}"
        + (f" --cpu-kv-gib {s['cpu_kv_gib']}" if s.get("cpu_kv_gib") else "")
        + "".join(f" --{key.replace('_', '-')} {s[key]}" for key, default in NON_DEFAULTS.items()
                  if s.get(key, default) != default)
        + f"` (model: SmolLM2-135M-Instruct, CPU, {res['machine'].get('cpus', '?')} cores; "
        f"total {res.get('total_seconds', '?')} s)",
        "",
    ]
    lines += summary_table(res)
    for label, r in res["runs"].items():
        lines += difficulty_section(label, r, s)
    lines += [
        "The arithmetic check judges a step's own arithmetic; `on_track` also asks whether the step is a step of",
        "this problem's solution (its value one of the problem's intermediates, computed from the problem's numbers",
        "or earlier intermediates), which is what an MC label estimates. A step with right but irrelevant arithmetic",
        "(\"13 * 3 = 39\" for \"Compute 13 + 3\") is right for the first and wrong for the second.",
        "",
        "The exact checker judges a step's own arithmetic; an MC label judges whether *this policy* can still",
        "reach the answer from the prefix. With a 135M model that often fails even from a right prefix, many",
        "right steps get MC label False (exact True, MC False), so agreement measures the policy as much as",
        "the labeller. A step with an arithmetic slip can also be \"rescued\" by a completion that recomputes",
        "the answer (exact False, MC True).",
    ]
    return "\n".join(lines) + "\n"


def summary_table(res: dict) -> list[str]:
    """One line per run: what the policy solves and how often its MC and OmegaPRM labels agree with the
    two exact yardsticks."""
    n = res["settings"]["n"]
    lines = ["| run | final answers right | steps checked | MC hard (N={n}) vs arithmetic | vs on track | "
             "MC soft AUC vs on track | OmegaPRM vs on track | tokens per MC label |".format(n=n),
             "|---|---|---|---|---|---|---|---|"]
    for label, r in res["runs"].items():
        a, o = r["yardsticks"]["arithmetic"], r["yardsticks"]["on_track"]
        lines.append(f"| {label} | {r['final_answer_accuracy']} | {r['steps_checkable']} | {a['mc_hard']} | "
                     f"{o['mc_hard']} | {o['mc_soft_auc']} | {o['omegaprm']} | {r['tokens']['mc_per_label']} |")
    return lines + [""]


def difficulty_section(label: str, r: dict, s: dict) -> list[str]:
    t = r["tokens"]
    goal = r["goal_hard_agreement_0.9_met"]
    d = r["difficulty"]
    return [
        f"## {label} ({'one operation' if str(d) == '1' else f'{d} operations'})",
        "",
        f"{r['problems']} problems, {r['paths']} sampled solutions, {r['steps_labelled_mc']} steps labelled, "
        f"{r['steps_checkable']} of them checkable (they state an equation). Final answers right: "
        f"{r['final_answer_accuracy']}.",
        "",
        "| label | agreement with exact step check | steps compared | generated tokens | tokens per label |",
        "|---|---|---|---|---|",
        f"| MC hard (N={s['n']}) | {r['mc_hard_vs_step_check']} | {r['steps_checkable']} | {t['mc']} | {t['mc_per_label']} |",
        f"| MC hard vs prefix check | {r['mc_hard_vs_prefix_check']} | | | |",
        f"| MC soft >= 0.5 (N={s['n']}) | {r.get('mc_soft_ge_0.5_vs_step_check')} | {r['steps_checkable']} | (same) | |",
        f"| OmegaPRM (N={s['n']}) | {r['omegaprm_vs_step_check']} | {r['omegaprm_steps_checkable']} | {t['omegaprm']} | {t['omegaprm_per_label']} |",
        f"| always 'wrong' (base rate) | {r.get('always_wrong_baseline')} | {r['steps_checkable']} | 0 | 0 |",
        f"| always 'right' | {None if r.get('always_wrong_baseline') is None else round(1 - r['always_wrong_baseline'], 4)}"
        f" | {r['steps_checkable']} | 0 | 0 |",
        "",
        f"Confusion (exact check vs MC hard): `{r['mc_confusion_vs_step_check']}`. Mean soft label: "
        f"{r['mc_soft_mean_when_step_right']} on right steps, {r['mc_soft_mean_when_step_wrong']} on wrong ones.",
        f"OmegaPRM: {r['omegaprm_rollouts']} rollouts, {r['omegaprm_incomplete_paths']} paths left undecided by the budget.",
        f"Seconds: {r['seconds']}. **Goal (hard agreement >= 0.9) met: {goal}.**",
        *([] if goal else [why_not(r)]),
        "",
        *yardstick_section(r, s),
    ]


def yardstick_section(r: dict, s: dict) -> list[str]:
    """Both yardsticks side by side: base rates, agreements, soft-label AUC, confusion, goal."""
    y = r.get("yardsticks")
    if not y:
        return []
    a, o = y["arithmetic"], y["on_track"]

    def row(label, key):
        return f"| {label} | {a.get(key)} | {o.get(key)} |"

    lines = [
        f"Against both yardsticks ({a['steps_compared']} steps; {r.get('right_but_off_track')} of them have right "
        "arithmetic but are off track):",
        "",
        "| | arithmetic (`check_step`) | on track (`on_track`) |",
        "|---|---|---|",
        row("base rate: share of steps right", "base_rate_right"),
        row(f"MC hard (N={s['n']}) agreement", "mc_hard"),
        row("MC hard vs prefix (every step so far right)", "mc_hard_vs_prefix"),
        row(f"MC soft >= 0.5 agreement", "mc_soft_ge_0.5"),
        row("MC soft AUC (right vs wrong steps)", "mc_soft_auc"),
        row(f"OmegaPRM (N={s['n']}) agreement", "omegaprm"),
        row("always 'right'", "always_right"),
        row("always 'wrong'", "always_wrong"),
        row("mean soft label, right steps", "mc_soft_mean_when_right"),
        row("mean soft label, wrong steps", "mc_soft_mean_when_wrong"),
        "",
        "Confusion (rows: yardstick, columns: MC hard):",
        "",
        "| yardstick | right, MC True | right, MC False | wrong, MC True | wrong, MC False |",
        "|---|---|---|---|---|",
    ]
    for name, ys in (("arithmetic", a), ("on track", o)):
        c = list(ys["confusion"].values())  # True/True, True/False, False/True, False/False
        lines.append(f"| {name} | {c[0]} | {c[1]} | {c[2]} | {c[3]} |")
    lines += [
        "",
        f"**Goal (hard agreement >= 0.9): against arithmetic {'met' if a['goal_hard_agreement_0.9_met'] else 'not met'} "
        f"({a['mc_hard']}), against on track {'met' if o['goal_hard_agreement_0.9_met'] else 'not met'} ({o['mc_hard']}).**",
        "",
    ]
    return lines


def why_not(r: dict) -> str:
    """A plain reading of the numbers when the goal is missed."""
    c = r["mc_confusion_vs_step_check"]
    missed, rescued = c["exact_True_mc_False"], c["exact_False_mc_True"]
    wrong = r.get("always_wrong_baseline")
    majority = None if wrong is None else round(max(wrong, 1 - wrong), 4)
    beats = r["mc_hard_vs_step_check"] is not None and majority is not None and r["mc_hard_vs_step_check"] > majority
    return (f"Why not: {missed + rescued} disagreements, {missed} right steps labelled False (nothing sampled from "
            f"them reached the reference answer; the policy solves only {r['final_answer_accuracy']} of its final "
            f"answers) and {rescued} wrong steps that a completion recovered from. Against the majority-class "
            f"labeller ({majority}) the hard "
            f"labels {'add something' if beats else 'add nothing'}.")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--paths", type=int, default=2, help="sampled solutions per problem")
    ap.add_argument("--n", type=int, default=8, help="completions per MC estimate")
    ap.add_argument("--difficulty", default="2", help="comma-separated list, one table each, e.g. 1,2")
    ap.add_argument("--few-shot", default="none",
                    help="comma-separated prompt settings: none, matched (arithmetic:<difficulty>), arithmetic, ...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-depth", type=int, default=6)
    ap.add_argument("--rollout-tokens", type=int, default=160)
    ap.add_argument("--budget", type=int, default=None, help="OmegaPRM rollouts per path")
    ap.add_argument("--backend", default="hf")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=1, help="hf backend: torch threads")
    ap.add_argument("--cpu-kv-gib", type=int, default=2, help="vllm backend on CPU: KV cache in GiB")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "labels"))
    ap.add_argument("--from-json", default=None, help="only re-render the results of an earlier run")
    args = ap.parse_args()
    args.difficulties = [int(x) for x in str(args.difficulty).split(",") if x.strip()]
    args.prompts = [x.strip() for x in str(args.few_shot).split(",") if x.strip()]
    if args.from_json:  # re-render the markdown of an earlier run
        res = json.loads(Path(args.from_json).read_text())
    else:
        res = asyncio.run(main(args, on_progress=lambda r: save(r, args.out)))
    save(res, args.out)
    print(markdown(res))
