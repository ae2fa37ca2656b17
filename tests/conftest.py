"""Shared fixtures. The real model is converted once per machine and shared by every test that needs it."""

from __future__ import annotations

import os

import pytest

# The backend fixtures are registered here, once: a second registration (e.g. as "tests.backend_fixtures")
# would make a second event loop and a second engine, and a vLLM engine serves one loop.
from backend_fixtures import aio, openai_policy, vllm_policy, vllm_server  # noqa: E402,F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder (converted on first use)."""
    from treepref.models import resolve_model

    return resolve_model()
