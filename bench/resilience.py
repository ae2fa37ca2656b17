"""What survives when a run is stopped: ``treepref generate`` (local and Ray executors, hf backend, the embedded
SmolLM2-135M) is sent SIGINT, SIGTERM or SIGKILL once some trees are written, then rerun.

For each case it records the trees written before the signal, the exit code and how long the driver took to
exit, which of the driver's descendant processes (engines, Ray's raylet, GCS and actor workers) were still alive
120 s later (and when the last one ended), and what the rerun did (exit code, trees resumed and searched, tree files, errors). Leftovers are
reported and then ended by their pid (this script started them).

    .venv/bin/python bench/resilience.py            # all six cases, ~10 min on 2 CPU cores
    .venv/bin/python bench/resilience.py --cases ray:KILL local:TERM
    .venv/bin/python bench/resilience.py --dispatch 400   # only the executors' overhead (scripted policy)

Writes bench/results/resilience.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """
model: {{name: null, backend: hf, options: {{num_threads: 1}}}}
problems: {{source: arithmetic, options: {{count: {count}, seed: 0, difficulty: 1}}}}
env: {{max_depth: 3, max_tokens: 96}}
sampling: {{temperature: 0.9, max_tokens: 24, rollout_max_tokens: 64, seed: 0}}
search: {{name: sample, options: {{n: 2}}}}
run: {{output: {out}, concurrency: 2, executor: {executor}, ray: {{actors: 2}}}}
"""
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


def trees(out: Path) -> int:
    return len(list((out / "trees").glob("*.json"))) if (out / "trees").is_dir() else 0


def generate(recipe: Path) -> subprocess.Popen:
    # SIGINT back to its default: a shell's background job starts with it ignored, and Python then keeps it so.
    return subprocess.Popen([sys.executable, "-m", "treepref.cli", "generate", "-c", str(recipe), "--no-extract",
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def case(executor: str, sig: str, count: int, work: Path) -> dict:
    out = work / f"{executor}-{sig}"
    recipe = work / f"{executor}-{sig}.yaml"
    recipe.write_text(RECIPE.format(count=count, out=out, executor=executor))
    proc = generate(recipe)
    deadline = time.monotonic() + 600
    while trees(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    kids = descendants(proc.pid)
    before = trees(out)
    t0 = time.monotonic()
    proc.send_signal(SIGNALS[sig])
    proc.wait(timeout=300)
    exit_s = round(time.monotonic() - t0, 2)
    alive = _alive(kids)
    while alive and time.monotonic() - t0 < exit_s + 120:
        time.sleep(0.5)
        alive = _alive(kids)
    gone_s = round(time.monotonic() - t0, 1) if not alive else None
    left = []
    for p in alive:
        try:
            left.append(" ".join(p.cmdline()[:2])[:60])
        except psutil.NoSuchProcess:
            pass
    for p in alive:  # ours: end them by pid
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    result = {"executor": executor, "signal": sig, "trees_before_signal": before, "exit_code": proc.returncode,
              "exit_s": exit_s, "descendants": len(kids), "all_gone_after_s": gone_s, "left_alive_after_120s": left}
    rerun = generate(recipe)
    log, _ = rerun.communicate(timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    result.update(rerun_exit=rerun.returncode, rerun_resumed=summary["resumed"], rerun_searched=summary["searched"],
                  rerun_failed=summary["failed"], tree_files=trees(out), problems=count,
                  errors_file=(out / "errors.jsonl").exists(), temp_files=len(list((out / "trees").glob(".*"))))
    return result


RANDOM_RECIPE = """
model: {{name: null, backend: {backend}, options: {options}}}
problems: {{source: arithmetic, options: {{count: {count}, seed: 0, difficulty: 2}}}}
env: {{max_depth: 5, max_tokens: 160, few_shot: "arithmetic:2"}}
sampling: {{temperature: 0.9, max_tokens: 48, rollout_max_tokens: 128}}
search: {{name: mcts, options: {{simulations: 8, k: 2, n_rollouts: 1, checkpoint_every: 2}}}}
run: {{output: {out}, concurrency: 4}}
"""


def random_kills(n: int, count: int, backend: str, horizon: float, seed: int, work: Path) -> dict:
    """``n`` SIGKILLs of one run at moments drawn uniformly in (1 s, ``horizon``) after each start (model
    loading, searches, tree and checkpoint writes all included), a resume after each, then a run to the end;
    then the run folder is audited against the problem set."""
    import random

    from treepref.tree import Tree

    rng = random.Random(seed)
    out = work / "random"
    options = "{num_threads: 1}" if backend == "hf" else "{cpu_kv_cache_gib: 2, max_model_len: 2048}"
    recipe = work / "random.yaml"
    recipe.write_text(RANDOM_RECIPE.format(backend=backend, options=options, count=count, out=out))
    kills, orphans = [], []
    for _ in range(n):
        proc = generate(recipe)
        at = rng.uniform(1.0, horizon)
        time.sleep(at)
        kids = descendants(proc.pid)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        time.sleep(30)  # what the tether and Ray need to notice
        left = _alive(kids)
        orphans += [p.pid for p in left]
        for p in left:
            p.kill()
        kills.append({"at_s": round(at, 1), "trees_after": trees(out), "finished_before_kill": finished,
                      "descendants": len(kids), "orphaned": len(left),
                      "checkpoints": len(list((out / "checkpoints").glob("*.pkl"))) if (out / "checkpoints").is_dir() else 0})
        print(json.dumps(kills[-1]), flush=True)
    final = generate(recipe)
    final.communicate(timeout=1800)
    ids, corrupt = [], 0
    for f in sorted((out / "trees").glob("*.json")):
        try:
            ids.append(Tree.load(f).problem_id)
        except Exception:
            corrupt += 1
    from treepref.domains import build_problems

    wanted = {p.id for p in build_problems("arithmetic", count=count, seed=0, difficulty=2)[0]}
    return {"kills": kills, "final_exit": final.returncode, "problems": count,
            "lost": len(wanted - set(ids)), "duplicated": len(ids) - len(set(ids)), "corrupt": corrupt,
            "foreign": len(set(ids) - wanted), "orphaned_processes": len(orphans),
            "temp_files": len(list((out / "trees").glob(".*"))),
            "checkpoints_left": len(list((out / "checkpoints").glob("*"))) if (out / "checkpoints").is_dir() else 0,
            "backend": backend, "seed": seed}


async def _exact(problem, answer):
    return float(answer == problem.answer)


def _scripted():
    """A scripted policy's context: the searches cost next to nothing, so what is timed is the executor."""
    from treepref.backends.base import Sampling
    from treepref.backends.scripted import EOS, ScriptedPolicy
    from treepref.envs.reasoning import ReasoningEnv, plain_template
    from treepref.search.base import SearchContext

    def script(steps):
        return [["1 + 1 = 2", "1 + 1 = 3"], ["The answer is 2." + EOS, "The answer is 3." + EOS]][min(len(steps), 1)]

    env = ReasoningEnv(template=plain_template, verifier=_exact, max_depth=4)
    return SearchContext(env=env, policy=ScriptedPolicy(script), sampling=Sampling(max_tokens=16, seed=0))


def dispatch(n: int) -> None:
    """Driver overhead: ``n`` scripted MCTS problems on the local runner, then on Ray with 1 and 2 actors."""
    import asyncio

    import ray

    from treepref.config import RaySection
    from treepref.executors.ray import run_problems_ray
    from treepref.problems import Problem
    from treepref.runner import run_problems
    from treepref.search.mcts import MCTSConfig, mcts

    problems = [Problem(id=f"p/{i}", prompt=f"What is 1 + 1? ({i})", answer="2") for i in range(n)]
    cfg = MCTSConfig(simulations=6, k=2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        asyncio.run(run_problems(problems, mcts, cfg, _scripted(), Path(tmp) / "local", concurrency=16, progress=False))
        print(f"local runner: {n} problems in {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - t0:.1f} s")
        for actors in (1, 2):
            t0 = time.perf_counter()
            s = run_problems_ray(problems, mcts, cfg, _scripted, Path(tmp) / f"ray{actors}",
                                 options=RaySection(actors=actors), concurrency=16, progress=False)
            print(f"ray, {actors} actor(s): {s.searched} problems in {time.perf_counter() - t0:.2f} s "
                  f"(actors' start included)")
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="*", default=[f"{e}:{s}" for e in ("local", "ray") for s in SIGNALS])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--dispatch", type=int, metavar="N", help="only time the executors' overhead on N problems")
    parser.add_argument("--random-kills", type=int, metavar="N", help="N SIGKILLs at random moments of one MCTS "
                        "run (checkpointing), then resume and audit: lost / duplicated / corrupt / orphaned")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--horizon", type=float, default=40.0, help="random kills fall in (1 s, this) after a start")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dispatch:
        dispatch(args.dispatch)
        return
    if args.random_kills:
        with tempfile.TemporaryDirectory(prefix="resilience-") as tmp:
            res = random_kills(args.random_kills, args.count, args.backend, args.horizon, args.seed, Path(tmp))
        res["command"] = "python bench/resilience.py " + " ".join(sys.argv[1:])
        results = ROOT / "bench" / "results"
        (results / "resilience-random.json").write_text(json.dumps(res, indent=2) + "\n")
        rows = "\n".join(f"| {i + 1} | {k['at_s']} | {k['trees_after']} | {k['checkpoints']} | {k['descendants']} | "
                         f"{k['orphaned']} |" for i, k in enumerate(res["kills"]))
        (results / "resilience-random.md").write_text(
            f"# SIGKILL at random moments, then resume (bench/resilience.py)\n\n`{res['command']}`: MCTS with "
            f"`checkpoint_every: 2` on {res['problems']} arithmetic problems ({res['backend']} backend).\n\n"
            "| kill | at s after start | trees written | checkpoints on disk | descendants | orphaned |\n"
            "|---|---|---|---|---|---|\n" + rows + "\n\n"
            f"After the final run (exit {res['final_exit']}): **lost {res['lost']}, duplicated {res['duplicated']}, "
            f"corrupt {res['corrupt']}, orphaned processes {res['orphaned_processes']}**; foreign trees "
            f"{res['foreign']}, temporary files {res['temp_files']}, checkpoints left {res['checkpoints_left']}.\n")
        print(json.dumps(res, indent=1))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="resilience-") as tmp:
        for item in args.cases:
            executor, sig = item.split(":")
            rows.append(case(executor, sig, args.count, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    if (results / "resilience.json").exists():  # a run of some cases keeps the other cases' rows
        ran = {(r["executor"], r["signal"]) for r in rows}
        kept = [r for r in json.loads((results / "resilience.json").read_text()) if (r["executor"], r["signal"]) not in ran]
        order = [f"{e}:{s}" for e in ("local", "ray") for s in SIGNALS]
        rows = sorted(kept + rows, key=lambda r: order.index(f"{r['executor']}:{r['signal']}"))
    (results / "resilience.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = ("| executor | signal | trees before | exit | exit s | descendants | all gone after s | left after 120 s | "
            "rerun exit | resumed | searched | tree files / problems | errors.jsonl | temp files |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r['executor']} | SIG{r['signal']} | {r['trees_before_signal']} | {r['exit_code']} | "
                     f"{r['exit_s']} | {r['descendants']} | {r['all_gone_after_s']} | "
                     f"{'; '.join(r['left_alive_after_120s']) or 'none'} | "
                     f"{r['rerun_exit']} | {r['rerun_resumed']} | {r['rerun_searched']} | "
                     f"{r['tree_files']} / {r['problems']} | {'yes' if r['errors_file'] else 'no'} | {r['temp_files']} |")
    (results / "resilience.md").write_text("# Stopping a run and rerunning it (bench/resilience.py)\n\n"
                                          + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
