"""Q-value models for agents: does acting by a trained step-level Q-value model beat the policy acting alone?

The last step of the loop of ``configs/q-value.yaml``, measured on shop goals held out from
``configs/agent-q.yaml`` (its ``problems`` section: the 16 goals after agent-q's 8, ``--goals`` / ``--skip`` to
change). Every arm runs ``q_guided`` episodes with the same ``k`` sampled actions per step and differs only in
how it picks one: ``q`` takes the action the Q-value model ranks highest (evaluator ``dpo_q`` on
configs/train-q-value.yaml's output), ``first`` the first sample (the policy alone), ``logprob`` the policy's
likeliest sample. Per arm: success rate and mean final reward (an episode that bought nothing: 0), pooled over
goals and repeats, with bootstrap 95% intervals that resample goals (a goal's repeats move together), and the
paired difference of each arm against ``first`` on the same resampled goals. With per-request seeds (vLLM on a
GPU) every arm draws the same k actions wherever its transcript is the baseline's.

    treepref generate -c configs/agent-q.yaml && treepref train -c configs/train-q-value.yaml   # the Q-value model
    python bench/q_value.py --goals 32 --repeats 4 --q-device cuda         # vLLM, SmolLM2, runs/train-q-value/model
    python bench/q_value.py --backend scripted --repeats 2                  # checks the harness (no model)

``--backend scripted`` replaces the policy by a scripted shopper (searches, clicks a result, an option or buys,
in an order the goal does not decide) and the Q-value model by a scorer that reads the goal's words, so the
harness, the statistics and the report run in seconds. Writes ``bench/results/q_value.{json,md}`` (scripted:
``q_value-scripted.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import treepref  # noqa: E402
from treepref.backends.scripted import ScriptedPolicy  # noqa: E402
from treepref.config import config_from_dict, read_yaml  # noqa: E402
from treepref.context import build_context  # noqa: E402
from treepref.domains import build_problems  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "q-value.yaml"
ARMS = ("q", "first", "logprob")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf", "scripted"])
    ap.add_argument("--model", default=None, help="the acting policy (default: the recipe's, the embedded SmolLM2)")
    ap.add_argument("--backend-options", default="{}", help="JSON keyword options of the backend")
    ap.add_argument("--q-model", default="runs/train-q-value/model", help="the Q-value model (treepref train output)")
    ap.add_argument("--q-device", default="cpu", help="where the Q-value model and its reference run (cpu, cuda)")
    ap.add_argument("--arms", default="q,first", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--k", type=int, default=None, help="actions sampled a step (default: the recipe's)")
    ap.add_argument("--goals", type=int, default=None, help="held-out goals (default: the recipe's count)")
    ap.add_argument("--skip", type=int, default=None, help="goals left out first (default: the recipe's, agent-q's 8)")
    ap.add_argument("--repeats", type=int, default=2, help="episodes per goal and arm")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the first repeat (+1 each repeat)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default=None, help="output path without suffix (default: bench/results/q_value)")
    args = ap.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad or "first" not in args.arms:
        ap.error(f"--arms: {', '.join(bad) or 'first is missing'} (choose from {', '.join(ARMS)}; first is the "
                 "baseline every arm is compared with)")
    if args.out is None:
        name = "q_value-scripted" if args.backend == "scripted" else "q_value"
        args.out = str(Path(__file__).parent / "results" / name)
    return args


# -- the scripted stand-ins -----------------------------------------------------------------------------------
class ScriptedShopper(ScriptedPolicy):
    """A shopper without a model: searches (a few of the goal's words, or all of them), clicks one of the first
    results, then buys or chooses an option. Its candidates' order ignores the goal, so the first is no oracle."""

    def __init__(self) -> None:
        super().__init__(self._next, delimiter="\n")

    def _steps(self, prompt) -> tuple[str, ...]:
        text = prompt if isinstance(prompt, str) else self.decode(prompt)
        goal = text.rpartition("<user>\n")[2].partition("\n")[0]
        return (goal, *super()._steps(prompt))

    @staticmethod
    def _next(state: tuple[str, ...]) -> list[str]:
        from treepref.envs.shop import product, search

        goal, lines = state[0], state[1:]
        done = [a for a in (s.removeprefix("Action:").strip() for s in lines if s.startswith("Action:")) if a]
        if not done:  # a few of the goal's words, or all of them
            return [f" search[{' '.join(goal.split()[3:7])}]", f" search[{goal}]"]
        last = done[-1]
        if last.startswith("search["):
            found = search(last[len("search["):-1])[:3]
            return [f" click[{a.lower()}]" for a in reversed(found)] or [" click[back to search]"]
        item = next((a[len("click["):-1].upper() for a in reversed(done) if a.startswith("click[b0")), None)
        values = [v for _, vs in product(item).options for v in vs] if item else []
        chosen = {a[len("click["):-1] for a in done}
        return [" click[buy now]", *(f" click[{v}]" for v in values[:3] if v not in chosen)]


def scripted_q(tree, node) -> float:
    """A stand-in Q that reads the goal: the share of the goal's words an action's text (a product's description
    for a click on an item) shares; buying scores 0.5, so a wanted option is chosen first."""
    from treepref.envs.shop import product

    goal = set(tree.prompt.lower().replace(",", " ").split())
    action = tree.text[node].lower()
    if action == "click[buy now]":
        return 0.5
    inner = action[action.find("[") + 1:-1]
    if action.startswith("click[b0"):
        try:
            p = product(inner.upper())
        except KeyError:
            return 0.0
        inner = " ".join((p.title, p.category, *p.attributes)).lower()
    words = set(inner.split())
    return len(words & goal) / max(len(words), 1)


# -- running -----------------------------------------------------------------------------------------------------
def recipe(args) -> tuple[object, list]:
    """configs/q-value.yaml with the bench's goals; its scorer is the bench's per arm."""
    data = read_yaml(RECIPE)
    data["search"]["options"]["scorer"] = "none"  # checked per arm below, not as the recipe's
    opts = data["problems"].setdefault("options", {})
    if args.goals is not None:
        opts["count"] = args.goals
    if args.skip is not None:
        opts.setdefault("options", {})["skip"] = args.skip
    if args.model is not None:
        data["model"]["name"] = args.model
    cfg = config_from_dict(data, str(RECIPE))
    problems, _ = build_problems(cfg.problems.source, **cfg.problems.options)
    return cfg, problems


def scorer_of(arm: str, args):
    if arm == "q":
        return scripted_q if args.backend == "scripted" else {"kind": "dpo_q", "model": args.q_model,
                                                              "device": args.q_device}
    return "none" if arm == "first" else "logprob"


async def run_arms(args, cfg, problems, policy) -> list[dict]:
    ctx = build_context(cfg, policy)
    k = args.k if args.k is not None else cfg.search.options.get("k", 4)
    episodes = []
    for repeat in range(args.repeats):
        sampling = {**dataclasses.asdict(cfg.sampling), "seed": args.seed + repeat}
        for arm in args.arms:
            t0 = time.perf_counter()
            trees = await treepref.search(problems, env=ctx.env, policy=policy, search="q_guided", sampling=sampling,
                                          concurrency=args.concurrency, k=k, scorer=scorer_of(arm, args))
            wall = time.perf_counter() - t0
            for t in trees:
                ep = t.meta["episode"]
                episodes.append({"arm": arm, "repeat": repeat, "goal": t.problem_id, "success": bool(ep["success"]),
                                 "reward": float(ep["reward"] or 0.0), "bought": ep["terminated"],
                                 "steps": t.meta["stats"]["steps"], "tokens": t.meta.get("generated_tokens", 0),
                                 "actions": [t.text[n] for n in ep["actions"]]})
            print(f"repeat {repeat} {arm:8s} {len(trees)} episodes in {wall:.1f} s", flush=True)
    return episodes


# -- statistics ----------------------------------------------------------------------------------------------------
def per_goal(episodes, arm: str, key: str) -> dict[str, float]:
    """Each goal's mean of ``key`` over its repeats in ``arm``."""
    out: dict[str, list[float]] = {}
    for e in episodes:
        if e["arm"] == arm:
            out.setdefault(e["goal"], []).append(float(e[key]))
    return {g: statistics.mean(v) for g, v in out.items()}


def bootstrap(values: list[float], n: int, rng: random.Random) -> dict:
    """The mean of ``values`` (one per goal) with a 95% percentile interval over resampled goals."""
    if not values:
        return {"mean": None, "low": None, "high": None}
    means = sorted(statistics.mean(rng.choices(values, k=len(values))) for _ in range(n))
    return {"mean": round(statistics.mean(values), 4), "low": round(means[int(0.025 * n)], 4),
            "high": round(means[min(n - 1, int(0.975 * n))], 4)}


def summarise(episodes, args) -> dict:
    rng = random.Random(0)
    arms, diffs = {}, {}
    for arm in args.arms:
        rows = [e for e in episodes if e["arm"] == arm]
        arms[arm] = {"episodes": len(rows), "goals": len({e["goal"] for e in rows}),
                     "success_rate": bootstrap(list(per_goal(episodes, arm, "success").values()), args.bootstrap, rng),
                     "mean_reward": bootstrap(list(per_goal(episodes, arm, "reward").values()), args.bootstrap, rng),
                     "bought": round(sum(e["bought"] for e in rows) / max(len(rows), 1), 4),
                     "mean_steps": round(statistics.mean(e["steps"] for e in rows), 2) if rows else None,
                     "tokens_per_episode": round(statistics.mean(e["tokens"] for e in rows), 1) if rows else None}
    for arm in args.arms:
        if arm == "first":
            continue
        diffs[f"{arm} - first"] = {}
        for key in ("success", "reward"):
            a, b = per_goal(episodes, arm, key), per_goal(episodes, "first", key)
            diffs[f"{arm} - first"][key] = bootstrap([a[g] - b[g] for g in a if g in b], args.bootstrap, rng)
    return {"arms": arms, "differences": diffs}


def interval(s: dict) -> str:
    return "–" if s["mean"] is None else f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def report(result: dict) -> str:
    m, summary = result["meta"], result["summary"]
    lines = [f"# Q-value model vs the policy alone ({m['backend']}, {m['goals']} held-out shop goals × "
             f"{m['repeats']} repeats, k = {m['k']})", "",
             f"Command: `{m['command']}`", "",
             "| arm | episodes | success rate [95% CI] | mean reward [95% CI] | bought | steps | tokens/episode |",
             "|---|---|---|---|---|---|---|"]
    for arm, s in summary["arms"].items():
        lines.append(f"| {arm} | {s['episodes']} | {interval(s['success_rate'])} | {interval(s['mean_reward'])} | "
                     f"{s['bought']:.2f} | {s['mean_steps']} | {s['tokens_per_episode']} |")
    if summary["differences"]:
        lines += ["", "Paired differences (per goal, the same resampled goals):", "",
                  "| comparison | success rate [95% CI] | mean reward [95% CI] |", "|---|---|---|"]
        for name, d in summary["differences"].items():
            lines.append(f"| {name} | {interval(d['success'])} | {interval(d['reward'])} |")
    lines += ["", "Arms: q = the action the Q-value model ranks highest; first = the first of the k samples (the "
              "policy alone); logprob = the policy's likeliest sample. Intervals resample goals (bootstrap, "
              f"{m['bootstrap']} draws); an episode that bought nothing has reward 0.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, problems = recipe(args)
    if args.backend == "scripted":
        policy = ScriptedShopper()
    else:
        if "q" in args.arms and not Path(args.q_model).is_dir():
            sys.exit(f"--q-model: no folder {args.q_model!r}; make it with `treepref generate -c configs/agent-q.yaml`"
                     " then `treepref train -c configs/train-q-value.yaml`")
        from treepref.backends import make_policy

        options = {**cfg.model.options, **json.loads(args.backend_options)}
        policy = make_policy(args.backend, cfg.model.name, **options)
    t0 = time.perf_counter()
    try:
        episodes = asyncio.run(run_arms(args, cfg, problems, policy))
    finally:
        close = getattr(policy, "close", None)
        if callable(close):
            close()
    k = args.k if args.k is not None else cfg.search.options.get("k", 4)
    result = {"meta": {"command": " ".join(["python", "bench/q_value.py", *(argv or sys.argv[1:])]),
                       "backend": args.backend, "model": cfg.model.name, "q_model": args.q_model if "q" in args.arms
                       else None, "arms": args.arms, "k": k, "goals": len(problems),
                       "goal_ids": [p.id for p in problems], "repeats": args.repeats, "seed": args.seed,
                       "bootstrap": args.bootstrap, "sampling": dataclasses.asdict(cfg.sampling),
                       "env": {"name": cfg.env.name, "max_depth": cfg.env.max_depth, **cfg.env.options},
                       "wall_s": round(time.perf_counter() - t0, 1), "python": platform.python_version(),
                       "machine": platform.machine()},
              "summary": summarise(episodes, args), "episodes": episodes}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1))
    atomic_write_text(out.with_suffix(".md"), report(result))
    print(report(result))


if __name__ == "__main__":  # vLLM on CPU spawns its engine process, which imports this file
    main()
