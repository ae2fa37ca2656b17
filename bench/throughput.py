#!/usr/bin/env python3
"""Throughput of a real tree search on a generation backend, against a replay and the public baselines.

Arms (each repeated ``--reps`` times, interleaved; medians reported):
  search     the search (``treepref.search.get_search(--search)``) over all problems at once, one asyncio
             task per problem, through the backend; every generation request is recorded
  replay     the requests the search just made, submitted together as one flat batch: the ceiling
  sequential one problem at a time, one request per expansion (llm-reasoners / MCTS-DPO without a pool)
  pool       K problems in flight (``--pool``, default 32), each expanding one node per request (OpenR)
  lockstep   all problems move depth by depth; a depth waits for its slowest request (rStar-Math)
The baselines walk the same shape as the default search: ``--depth`` expansions per problem, each one
request of ``n=--width`` steps, continuing from the first child. Reported per arm: generated tokens/s, its
ratio to the replay's, nodes/s (new tree nodes: completions), and vLLM's prefix-cache hit rate.

    python bench/throughput.py --backend vllm --problems 128 --depth 4 --width 4 --reps 3

Writes ``bench/results/throughput-<backend>-<device>-<search>-p<problems>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from treepref.backends.base import Sampling  # noqa: E402
from treepref.problems import Problem  # noqa: E402

ARMS = ("search", "replay", "sequential", "pool", "lockstep")


def load_problems(count: int, seed: int = 0) -> list[Problem]:
    try:
        from treepref.domains.arithmetic import generate

        return generate(count, seed=seed)
    except ImportError:  # the built-in domain is missing: simple generated questions
        import random

        out = []
        for i in range(count):
            r = random.Random(f"bench:{seed}:{i}")
            a, b, c = r.randint(2, 40), r.randint(2, 40), r.randint(2, 9)
            out.append(Problem(id=f"q{i}", prompt=f"Compute ({a} + {b}) * {c}. Work one operation per step.",
                               answer=str((a + b) * c)))
        return out


def device_name(backend: str) -> str:
    try:
        import torch

        if backend in ("vllm", "hf") and torch.cuda.is_available():
            return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
    except ImportError:
        pass
    return "cpu" if backend != "openai" else "server"


def make_backend(args):
    if args.backend == "vllm":
        from treepref.backends.vllm import VLLMPolicy

        opts = {"max_model_len": args.max_model_len}
        if args.cpu_kv_gib:
            opts["cpu_kv_cache_gib"] = args.cpu_kv_gib
        return VLLMPolicy(args.model, **opts)
    if args.backend == "hf":
        from treepref.backends.hf import HFPolicy

        return HFPolicy(args.model)
    if args.backend == "openai":
        from treepref.backends.openai import OpenAIPolicy

        return OpenAIPolicy(args.model, base_url=args.base_url, max_concurrency=args.concurrency,
                            timeout_s=600, tokenizer=args.tokenizer)
    if args.backend == "scripted":
        from treepref.backends.scripted import EOS, ScriptedPolicy

        return ScriptedPolicy(lambda steps: [f"Step {len(steps)} a b c d e", f"Step {len(steps)} f g h",
                                             "The answer is 1." + EOS])
    raise SystemExit(f"unknown backend {args.backend!r}")


def search_config(name: str, args):
    from treepref.search import get_config_class

    cls = get_config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    opts = {}
    if "k" in fields:
        opts["k"] = args.width
    for budget in ("simulations", "max_expansions"):
        if budget in fields:
            opts[budget] = args.depth
    if "n_rollouts" in fields and args.rollouts is not None:
        opts["n_rollouts"] = args.rollouts
    opts.update(json.loads(args.search_options or "{}"))
    return cls(**{k: v for k, v in opts.items() if k in fields})


class Bench:
    def __init__(self, policy, problems: list[Problem], args) -> None:
        from treepref.envs.reasoning import ReasoningEnv
        from treepref.search.base import SearchContext

        self.policy, self.problems, self.args = policy, problems, args
        self.env = ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=max(args.depth, 1) + 2)
        self.sampling = Sampling(temperature=args.temperature, max_tokens=args.step_tokens)
        self.ctx = SearchContext(env=self.env, policy=policy, sampling=self.sampling,
                                 rollout_max_tokens=args.rollout_tokens)
        self.step_params = self.sampling.with_(n=args.width, stop=tuple(self.env.stop))
        self.log: list = []

    # --- arms: each returns the number of completions (new nodes) it produced ---------------------------
    async def search(self) -> int:
        from treepref.search import get_search

        fn, cfg = get_search(self.args.search), search_config(self.args.search, self.args)
        self.policy.stats.log = []
        try:
            trees = await asyncio.gather(*(fn(p, self.ctx, cfg) for p in self.problems))
        finally:
            self.log, self.policy.stats.log = self.policy.stats.log, None
        return sum(len(t) - 1 for t in trees)

    async def replay(self) -> int:
        outs = await asyncio.gather(*(self.policy.generate(prompts, params) for prompts, params in self.log))
        return sum(len(c) for out in outs for c in out)

    async def _walk(self, problem: Problem) -> int:
        prompt, nodes = self.env.prompt(problem), 0
        for _ in range(self.args.depth):
            [children] = await self.policy.generate([prompt], self.step_params)
            nodes += len(children)
            prompt += children[0].text if children[0].text.endswith(self.env.delimiter) else \
                children[0].text + self.env.delimiter
        return nodes

    async def sequential(self) -> int:
        return sum([await self._walk(p) for p in self.problems])

    async def pool(self) -> int:
        sem = asyncio.Semaphore(self.args.pool)

        async def one(p):
            async with sem:
                return await self._walk(p)

        return sum(await asyncio.gather(*(one(p) for p in self.problems)))

    async def lockstep(self) -> int:
        prompts = [self.env.prompt(p) for p in self.problems]
        nodes = 0
        for _ in range(self.args.depth):
            outs = await asyncio.gather(*(self.policy.generate([pr], self.step_params) for pr in prompts))
            for i, [children] in enumerate(outs):
                nodes += len(children)
                text = children[0].text
                prompts[i] += text if text.endswith(self.env.delimiter) else text + self.env.delimiter
        return nodes

    async def run_arm(self, arm: str) -> dict:
        policy = self.policy
        if hasattr(policy, "reset_prefix_cache"):
            await policy.reset_prefix_cache()
        counters = policy.cache_counters() if hasattr(policy, "cache_counters") else None
        tokens0, requests0 = policy.stats.generated_tokens, policy.stats.requests
        t0 = time.perf_counter()
        nodes = await getattr(self, arm)()
        dt = time.perf_counter() - t0
        tokens = policy.stats.generated_tokens - tokens0
        row = {"arm": arm, "seconds": round(dt, 3), "tokens": tokens, "nodes": nodes,
               "requests": policy.stats.requests - requests0, "tok_s": round(tokens / dt, 2),
               "nodes_s": round(nodes / dt, 3)}
        if counters is not None:
            rate = policy.prefix_cache_hit_rate(counters)
            row["prefix_cache_hit_rate"] = None if rate is None else round(rate, 4)
        return row


async def main_async(args) -> dict:
    problems = load_problems(args.problems, seed=args.seed)
    policy = make_backend(args)
    bench = Bench(policy, problems, args)
    arms = [a for a in args.arms.split(",") if a]
    if "replay" in arms and "search" not in arms:
        raise SystemExit("the replay arm replays the search arm: include both")
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    try:
        # Warm-up: the first requests pay one-time costs (allocations, kernel selection).
        await policy.generate([bench.env.prompt(problems[0])], Sampling(max_tokens=4))
        for rep in range(args.reps):
            for arm in arms:
                row = await bench.run_arm(arm)
                runs[arm].append(row)
                print(f"rep {rep} {arm:10s} tokens={row['tokens']:7d} {row['seconds']:8.2f}s "
                      f"tok/s={row['tok_s']:9.1f} nodes/s={row['nodes_s']:8.2f} "
                      f"hit={row.get('prefix_cache_hit_rate')}", flush=True)
    finally:  # also on Ctrl-C / SIGTERM: vLLM's engine process outlives a parent that dies uncleanly
        if hasattr(policy, "close"):
            policy.close()
    summary = {}
    for arm, rows in runs.items():
        summary[arm] = {"median_tok_s": statistics.median(r["tok_s"] for r in rows),
                        "median_nodes_s": statistics.median(r["nodes_s"] for r in rows),
                        "median_seconds": statistics.median(r["seconds"] for r in rows),
                        "median_tokens": statistics.median(r["tokens"] for r in rows)}
        rates = [r.get("prefix_cache_hit_rate") for r in rows if r.get("prefix_cache_hit_rate") is not None]
        summary[arm]["median_prefix_cache_hit_rate"] = statistics.median(rates) if rates else None
    if "replay" in summary:
        ceiling = summary["replay"]["median_tok_s"]
        for arm in summary:
            summary[arm]["ratio_to_replay"] = round(summary[arm]["median_tok_s"] / ceiling, 3) if ceiling else None
        # Also per rep: each arm against the replay of the same rep.
        for arm in summary:
            per = [r["tok_s"] / rp["tok_s"] for r, rp in zip(runs[arm], runs["replay"]) if rp["tok_s"]]
            summary[arm]["median_ratio_per_rep"] = round(statistics.median(per), 3) if per else None
    return {"config": {k: v for k, v in vars(args).items()}, "device": device_name(args.backend),
            "host": platform.node(), "python": platform.python_version(), "versions": _versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary, "runs": runs}


def _versions() -> dict:
    out = {}
    for name in ("vllm", "torch", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            pass
    return out


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [f"# Throughput: {cfg['search']} on {cfg['backend']} ({result['device']})", "",
             f"{cfg['problems']} problems, depth {cfg['depth']}, width {cfg['width']}, step tokens "
             f"{cfg['step_tokens']}, pool K={cfg['pool']}, {cfg['reps']} interleaved reps (medians), "
             f"{result['time']}, versions {result['versions']}.", "",
             "| arm | tokens/s | ratio to replay | per-rep ratio | nodes/s | prefix-cache hit rate | seconds | tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, s in result["summary"].items():
        hit = s.get("median_prefix_cache_hit_rate")
        lines.append(f"| {arm} | {s['median_tok_s']:.1f} | {s.get('ratio_to_replay', '')} | "
                     f"{s.get('median_ratio_per_rep', '')} | {s['median_nodes_s']:.2f} | "
                     f"{'' if hit is None else f'{hit:.3f}'} | {s['median_seconds']:.1f} | {s['median_tokens']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf", "openai", "scripted"])
    ap.add_argument("--model", default=None, help="model folder or hub id (default: the embedded SmolLM2)")
    ap.add_argument("--search", default="mcts", help="a name in treepref.search.SEARCHES")
    ap.add_argument("--search-options", default=None, help="JSON of more search config fields, "
                    'e.g. \'{"parallel_simulations": 4}\'')
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4, help="expansions per problem (the search's budget)")
    ap.add_argument("--width", type=int, default=4, help="steps sampled per expansion (n)")
    ap.add_argument("--rollouts", type=int, default=0, help="Monte Carlo rollouts per node, where the search has them")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pool", type=int, default=32, help="K of the pool baseline")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--step-tokens", type=int, default=96)
    ap.add_argument("--rollout-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--cpu-kv-gib", type=int, default=None, help="vLLM KV cache on CPU machines (GiB)")
    ap.add_argument("--base-url", default=None, help="openai backend: the server's /v1 URL")
    ap.add_argument("--tokenizer", default=None, help="openai backend: a local tokenizer")
    ap.add_argument("--concurrency", type=int, default=256, help="openai backend: requests in flight")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return ap.parse_args(argv)


def main(argv=None) -> None:
    import signal

    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = asyncio.run(main_async(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput-{args.backend}-{result['device']}-{args.search}-p{args.problems}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":  # required: on CPU machines vLLM spawns its engine process
    main()
