"""Sandbox throughput: executions per second, and what the isolation costs per execution, side by side.

On the 164 HumanEval reference solutions (each with its own tests), in one run, interleaved so that the
machine's load falls on every design alike:
  * ``bare``: ``python -c`` of the whole program HumanEval's own harness runs (prompt + solution + tests +
    ``check(entry_point)``): no isolation, and a verdict the solution could forge;
  * ``bwrap sandbox``: today's ``verifiers.sandbox.run_code`` (the worker under bubblewrap, the trusted
    harness outside, one authenticated verdict), one execution at a time and through ``CodeVerifier``'s
    pool of ``--workers``;
  * ``previous sandbox``: the same two designs as of ``--baseline`` (a git revision; default: the last one
    before the bubblewrap boundary), loaded from git into a temporary folder;
  * the floors: ``python -I -S -c pass``, and the same under the sandbox's bwrap command line (what the
    boundary alone costs one process).

    python bench/sandbox.py --workers 1,2 --repeat 2

Writes ``bench/results/sandbox.{json,md}``. Times are wall-clock on this machine (2 CPU cores here, shared):
they compare the designs with each other, they are not a GPU machine's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from treepref.domains import build_problems  # noqa: E402
from treepref.domains.code import reference_solution  # noqa: E402
from treepref.tree import atomic_write_text  # noqa: E402
from treepref.verifiers import sandbox  # noqa: E402

LIMITS = dict(cpu_s=5, wall_s=20)
BASELINE = "78f0962"  # the last revision before the bubblewrap boundary (issue 24)


def load_baseline(rev: str, folder: str):
    """The sandbox module as of ``rev``, with its child program beside it, imported under another name."""
    for name in ("sandbox.py", "sandbox_child.py"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:treepref/verifiers/{name}"], check=True,
                              capture_output=True, text=True).stdout
        Path(folder, name).write_text(text)
    spec = importlib.util.spec_from_file_location("baseline_sandbox", Path(folder, "sandbox.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_sandbox"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def bare(problem) -> bool:
    m = problem.meta
    program = reference_solution(problem) + "\n" + m["test"] + f"\ncheck({m['entry_point']})\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", program], capture_output=True, timeout=60).returncode == 0


def one_at_a_time(module):
    def run(problem) -> bool:
        m = problem.meta
        return module.run_code(reference_solution(problem), check=m["test"], entry_point=m["entry_point"],
                               setup=m["setup"], limits=module.Limits(**LIMITS)).passed
    return run


def timed(fn, items, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        ok = sum(pool.map(fn, items))
    return time.perf_counter() - t0, ok


async def through_verifier(module, problems, workers: int) -> tuple[float, int]:
    verifier = module.CodeVerifier(module.Limits(**LIMITS), workers=workers)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(verifier.run(p, reference_solution(p)) for p in problems))
    return time.perf_counter() - t0, sum(r.passed for r in results)


def floor_ms(argv: list[str], preexec=None, n: int = 30) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, preexec_fn=preexec)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the previous sandbox ('' to leave out)")
    ap.add_argument("--count", type=int, default=None, help="the first N problems only (a quick check)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox"))
    args = ap.parse_args(argv)
    problems = build_problems("humaneval", count=args.count)[0]
    n = len(problems)
    boundary = sandbox.require_boundary()
    records = []
    folder = tempfile.mkdtemp(prefix="treepref-bench-baseline-")
    designs = [("bwrap sandbox", sandbox)]
    if args.baseline:
        designs.append(("previous sandbox", load_baseline(args.baseline, folder)))

    def add(design, workers, seconds, ok, repeat):
        rec = {"design": design, "workers": workers, "executions": n, "passed": ok, "repeat": repeat,
               "seconds": round(seconds, 3), "executions_per_s": round(n / seconds, 2),
               "ms_per_execution": round(seconds / n * 1000, 2)}
        records.append(rec)
        print(json.dumps(rec), flush=True)

    uid = sandbox._fresh_uid() if boundary["as_root"] else None
    bwrap_argv = sandbox._sandbox_argv(boundary["bwrap"], boundary["mounts"], sandbox.Limits())
    floors = {"python_c_pass_ms": floor_ms([sys.executable, "-I", "-S", "-c", "pass"]),
              "sandbox_python_c_pass_ms": floor_ms([boundary["python"], "-I", "-S", "-c", "pass"]),
              "bwrap_python_c_pass_ms": floor_ms(bwrap_argv + [boundary["python"], "-I", "-S", "-c", "pass"],
                                                 sandbox._drop_to(uid))}
    for repeat in range(args.repeat):
        for workers in [int(w) for w in args.workers.split(",")]:
            add("bare python -c", workers, *timed(bare, problems, workers), repeat)
            for name, module in designs:
                add(f"{name} run_code", workers, *timed(one_at_a_time(module), problems, workers), repeat)
                add(f"{name} CodeVerifier pool", workers, *asyncio.run(through_verifier(module, problems, workers)),
                    repeat)
    meta = {"command": "python bench/sandbox.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "sandbox_python": boundary["python"], "bwrap": boundary["bwrap"],
            "bwrap_version": subprocess.run([boundary["bwrap"], "--version"], capture_output=True,
                                            text=True).stdout.strip(),
            "baseline": args.baseline, "as_root": boundary["as_root"],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()], **floors}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "records": records}, indent=1))
    atomic_write_text(out.with_suffix(".md"), report(meta, records))
    print(report(meta, records))
    return 0


def report(meta, records) -> str:
    lines = [f"# Sandbox throughput\n\n`{meta['command']}` on {meta['machine']} ({meta['cpus']} CPUs, load "
             f"average {meta['load_average_at_end']} at the end: the machine was shared), {meta['bwrap_version']}, "
             f"{'as root' if meta['as_root'] else 'as a non-root user'}. {records[0]['executions']} HumanEval reference "
             f"solutions with their tests; medians over repeats; the designs interleaved. `previous sandbox` is the code as of "
             f"{meta['baseline']} (before the bubblewrap boundary).\n",
             f"Floors: `python -I -S -c pass` {meta['python_c_pass_ms']} ms (the harness's interpreter), "
             f"{meta['sandbox_python_c_pass_ms']} ms (the worker's); the same under the sandbox's bwrap command "
             f"line (namespaces, mounts, tmpfs) {meta['bwrap_python_c_pass_ms']} ms, so the boundary alone costs "
             f"{round(meta['bwrap_python_c_pass_ms'] - meta['sandbox_python_c_pass_ms'], 1)} ms per execution.\n",
             "| design | workers | passed | executions/s | ms per execution | overhead vs bare (ms) |",
             "|---|---|---|---|---|---|"]
    keys = sorted({(r["design"], r["workers"]) for r in records}, key=lambda k: (k[1], k[0]))
    med = {k: statistics.median([r["ms_per_execution"] for r in records if (r["design"], r["workers"]) == k])
           for k in keys}
    for design, workers in keys:
        rs = [r for r in records if (r["design"], r["workers"]) == (design, workers)]
        ms = round(med[(design, workers)], 1)
        base = round(med.get(("bare python -c", workers), 0), 1)
        lines.append(f"| {design} | {workers} | {min(r['passed'] for r in rs)}/{rs[0]['executions']} | "
                     f"{round(1000 / ms, 1)} | {ms} | {round(ms - base, 1) if base else ''} |")
    for workers in sorted({r["workers"] for r in records}):
        new, old = med.get(("bwrap sandbox CodeVerifier pool", workers)), med.get(
            ("previous sandbox CodeVerifier pool", workers))
        if new and old:
            lines.append(f"\nWith {workers} worker(s), the bwrap boundary runs at {round(old / new, 2)}x the previous "
                         f"sandbox's executions per second through `CodeVerifier` ({round(new - old, 1)} ms more per "
                         "execution).")
    lines.append("\nPer execution both sandboxes start two interpreters (the sandboxed worker and the trusted "
                 "harness) where the bare design starts one, and pass every call of the tests through a pipe; the "
                 "bwrap sandbox also makes seven namespaces, mounts the read-only runtime and three tmpfs, and "
                 "authenticates the verdict. `bare` is what HumanEval's own `check` program costs without any of "
                 "it (and its verdict can be forged: tests/test_sandbox_forgery.py, tests/test_sandbox_attacks.py).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
