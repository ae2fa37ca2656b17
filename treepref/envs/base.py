"""The environment contract: what a state is, how an action (a step of text) changes it, when it ends.

Functional, in the spirit of Gymnasium's functional API: ``step`` returns a new state instead of mutating
one, so a tree can branch from any node without copying live objects. ``terminated`` means the task ended
(a final answer, a purchase); ``truncated`` means a budget ran out first. The two need different value
targets, so they stay separate all the way into the Tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from treepref.problems import Problem


@dataclass(frozen=True)
class State:
    problem: Problem
    steps: tuple[str, ...] = ()
    n_tokens: int = 0  # tokens generated along this path
    data: Any = None  # environment-specific (an agent's observation, a tool's output)

    @property
    def depth(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Transition:
    state: State
    reward: float | None  # None: nothing to reward yet, or no reference to judge against
    terminated: bool
    truncated: bool
    info: dict = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    stop: tuple[str, ...]  # stop strings that end one step of generation

    def initial(self, problem: Problem) -> State: ...

    def render(self, state: State) -> str:
        """The text the policy continues from this state."""
        ...

    async def step(self, state: State, action: str, *, n_tokens: int = 0, ended: bool = False) -> Transition:
        """Apply one generated step. ``ended``: the model stopped on its own (end of sequence)."""
        ...

    def split_steps(self, text: str) -> list[str]:
        """Cut a multi-step completion (a rollout) into the steps ``step`` expects."""
        ...
