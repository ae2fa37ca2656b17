"""Generation backends. Each heavy backend imports lazily, so a missing optional package only matters
when that backend is asked for."""

from __future__ import annotations

from treepref.backends.base import Coalescer, Completion, GenerationStats, Policy, Sampling
from treepref.registry import Registry

BACKENDS = Registry("backend", {
    "hf": "treepref.backends.hf:HFPolicy",
    "transformers": "treepref.backends.hf:HFPolicy",
    "vllm": "treepref.backends.vllm:VLLMPolicy",
    "openai": "treepref.backends.openai:OpenAIPolicy",
    "server": "treepref.backends.openai:OpenAIPolicy",
})


def make_policy(backend: str, model: str | None = None, **options) -> Policy:
    """Build the named backend for ``model`` (a folder, a hub id, or None for the embedded default)."""
    return BACKENDS.get(backend)(model=model, **options)


__all__ = ["BACKENDS", "Coalescer", "Completion", "GenerationStats", "Policy", "Sampling", "make_policy"]
