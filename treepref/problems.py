"""Problem records and where they come from (files, `datasets`, built-in generators)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One task to search on. ``prompt`` is plain text or a list of chat messages."""

    id: str
    prompt: str | list[dict]
    answer: str | None = None  # reference final answer, when the domain has one
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The user's text: the prompt itself, or the last user message."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m["content"] for m in self.prompt if m.get("role") == "user"]
        return users[-1] if users else ""

    def messages(self, system: str | None = None) -> list[dict]:
        """The prompt as chat messages, with an optional system message in front."""
        msgs = [{"role": "user", "content": self.prompt}] if isinstance(self.prompt, str) else list(self.prompt)
        if system and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": system}] + msgs
        return msgs
