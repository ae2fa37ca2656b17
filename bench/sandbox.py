"""Sandbox throughput: executions per second, and what the isolation costs per execution, side by side.

On the 164 HumanEval reference solutions (each with its own tests), in one run:
  * ``bare``: ``python -c`` of the whole program HumanEval's own harness runs (prompt + solution + tests +
    ``check(entry_point)``): no isolation, and a verdict the solution could forge;
  * ``sandbox``: ``verifiers.sandbox.run_code`` (sandboxed worker + trusted harness, the verdict outside
    the solution's reach), one execution at a time and through ``CodeVerifier``'s pool of ``--workers``;
  * ``python -c pass`` alone, the floor of any process-per-execution design.

    python bench/sandbox.py --workers 1,2 --repeat 2

Writes ``bench/results/sandbox.{json,md}``. Times are wall-clock on this machine (2 CPU cores here): they
compare the designs with each other, they are not a GPU machine's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from treepref.domains import build_problems  # noqa: E402
from treepref.domains.code import reference_solution  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402
from treepref.verifiers.sandbox import CodeVerifier, Limits, run_code, sandbox_python  # noqa: E402

LIMITS = Limits(cpu_s=5, wall_s=20)


def bare(problem) -> bool:
    m = problem.meta
    program = reference_solution(problem) + "\n" + m["test"] + f"\ncheck({m['entry_point']})\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", program], capture_output=True, timeout=60).returncode == 0


def sandboxed(problem) -> bool:
    m = problem.meta
    return run_code(reference_solution(problem), check=m["test"], entry_point=m["entry_point"],
                    setup=m["setup"], limits=LIMITS).passed


def timed(fn, items, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        ok = sum(pool.map(fn, items))
    return time.perf_counter() - t0, ok


async def through_verifier(problems, workers: int) -> tuple[float, int]:
    verifier = CodeVerifier(LIMITS, workers=workers)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(verifier.run(p, reference_solution(p)) for p in problems))
    return time.perf_counter() - t0, sum(r.passed for r in results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox"))
    args = ap.parse_args(argv)
    problems = build_problems("humaneval")[0]
    n = len(problems)
    records = []

    def add(design, workers, seconds, ok, repeat):
        rec = {"design": design, "workers": workers, "executions": n, "passed": ok, "repeat": repeat,
               "seconds": round(seconds, 3), "executions_per_s": round(n / seconds, 2),
               "ms_per_execution": round(seconds / n * 1000, 2)}
        records.append(rec)
        print(json.dumps(rec), flush=True)

    floor = []
    for _ in range(20):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        floor.append(time.perf_counter() - t0)
    for repeat in range(args.repeat):
        for workers in [int(w) for w in args.workers.split(",")]:
            add("bare python -c", workers, *timed(bare, problems, workers), repeat)
            add("sandbox run_code", workers, *timed(sandboxed, problems, workers), repeat)
            add("sandbox CodeVerifier pool", workers, *asyncio.run(through_verifier(problems, workers)), repeat)
    meta = {"command": "python bench/sandbox.py " + " ".join(sys.argv[1:]), "machine": platform.platform(),
            "cpus": __import__("os").cpu_count(), "python": sys.version.split()[0],
            "sandbox_python": sandbox_python(__import__("os").geteuid() == 0),
            "python_c_pass_ms": round(statistics.median(floor) * 1000, 2)}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "records": records}, indent=1))
    atomic_write_text(out.with_suffix(".md"), report(meta, records))
    print(report(meta, records))
    return 0


def report(meta, records) -> str:
    lines = [f"# Sandbox throughput\n\n`{meta['command']}` on {meta['machine']} ({meta['cpus']} CPUs). "
             f"164 HumanEval reference solutions with their tests; medians over repeats. `python -I -S -c pass` "
             f"alone: {meta['python_c_pass_ms']} ms.\n",
             "| design | workers | passed | executions/s | ms per execution | overhead vs bare (ms) |",
             "|---|---|---|---|---|---|"]
    keys = sorted({(r["design"], r["workers"]) for r in records}, key=lambda k: (k[1], k[0]))
    med = {k: statistics.median([r["ms_per_execution"] for r in records if (r["design"], r["workers"]) == k])
           for k in keys}
    for design, workers in keys:
        rs = [r for r in records if (r["design"], r["workers"]) == (design, workers)]
        ms = round(med[(design, workers)], 1)
        base = round(med.get(("bare python -c", workers), 0), 1)
        lines.append(f"| {design} | {workers} | {rs[0]['passed']}/{rs[0]['executions']} | "
                     f"{round(1000 / ms, 1)} | {ms} | {round(ms - base, 1) if base else ''} |")
    lines.append("\nPer execution the sandbox starts two interpreters (the sandboxed worker and the trusted "
                 "harness) where the bare design starts one, sets up a network namespace and a fresh uid, and "
                 "passes every call of the tests through a pipe; `bare` is what HumanEval's own `check` "
                 "program costs without any of it (and its verdict can be forged: tests/test_sandbox_forgery.py).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
