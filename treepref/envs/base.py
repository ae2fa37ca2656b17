"""The environment contract: what a state is, how an action (a step of text) changes it, when it ends.

Functional, in the spirit of Gymnasium's functional API: ``step`` returns a new state instead of mutating
one, so a tree can branch from any node without copying live objects. ``terminated`` means the task ended
(a final answer, a purchase); ``truncated`` means a budget ran out first. The two need different value
targets, so they stay separate all the way into the Tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from treepref.problems import Problem
from treepref.tokens import Piece


@dataclass(frozen=True)
class State:
    problem: Problem
    steps: tuple[str, ...] = ()
    n_tokens: int = 0  # tokens generated along this path
    data: Any = None  # environment-specific (an agent's observation, a tool's output)
    token_ids: tuple[int, ...] = ()  # what the policy continues: the prompt's ids, then every step's ids

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

    def render(self, state: State) -> tuple[int, ...]:
        """The token ids the policy continues from this state (a child's are its parent's plus its step's)."""
        ...

    def render_text(self, state: State) -> str:
        """The same state as text, for people, judges and text-only exports."""
        ...

    async def step(self, state: State, action: str, *, token_ids: Sequence[int] | None = None,
                   ended: bool = False) -> Transition:
        """Apply one step. ``token_ids``: the ids the policy generated for it (None: a step given as text,
        which the environment encodes). ``ended``: the model stopped on its own (end of sequence)."""
        ...

    def split(self, text: str, token_ids: Sequence[int], token_logprobs: Sequence[float],
              logprob: float) -> list[Piece]:
        """Cut a multi-step completion (a rollout) into the steps ``step`` expects, in token space."""
        ...
