"""Shared fixtures. The real model is converted once per machine and shared by every test that needs it."""

from __future__ import annotations

import os

import pytest

# The backend fixtures are registered here, once: a second registration (e.g. as "tests.backend_fixtures")
# would make a second event loop and a second engine, and a vLLM engine serves one loop.
from backend_fixtures import aio, openai_policy, sole_engine, vllm_policy, vllm_server  # noqa: E402,F401

# Tests that start a vLLM engine or server of their own run after every other test, once the in-process engine
# is closed (backend_fixtures.release_engines), so that two engines never share the cores: first those whose
# engine lives as long as the test (a CLI run), then those of the session's server, which lives to the end.
SERVER = {"vllm_server", "openai_policy"}


def pytest_configure(config):
    config.addinivalue_line("markers", "own_engine: uses the session's vllm serve process (runs last, alone)")


def group_of(item) -> int:
    """0: every other test; 1: a test that starts its own engine; 2: a test of the session's server."""
    names = set(getattr(item, "fixturenames", ()))
    if names & SERVER or item.get_closest_marker("own_engine"):
        return 2
    return 1 if "sole_engine" in names else 0


def pytest_collection_modifyitems(config, items):
    for item in items:  # every test that loads the real model is slow, marked or not (-m "not slow" skips them all)
        if "model_dir" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    items.sort(key=group_of)  # stable: the order within each group stays

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def torch_threads():
    """Every test starts with torch's own thread count: ``num_threads`` of the hf backend is process-wide, and one
    test's single thread made every later real-model test in the session run at half speed on two cores."""
    import sys

    torch = sys.modules.get("torch")  # a test that never loaded torch does not load it here
    before = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(before or len(os.sched_getaffinity(0)))  # loaded by this test: every usable core


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder (converted on first use)."""
    from treepref.models import resolve_model

    return resolve_model()
