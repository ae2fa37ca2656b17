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
    args = parser.parse_args()
    if args.dispatch:
        dispatch(args.dispatch)
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
