"""The environment contract: what a state is, how an action (a step of text) changes it, when it ends.

Functional, in the spirit of Gymnasium's functional API: ``step`` returns a new state instead of mutating
one, so a tree can branch from any node without copying live objects. ``terminated`` means the task ended
(a final answer, a purchase); ``truncated`` means a budget ran out first. The two need different value
targets, so they stay separate all the way into the Tree.

The environment owns its text. A state carries the context the policy continues both as token ids and as
the text those ids spell; a step extends both: the action as the policy generated it, then whatever the
environment appends (an observation, tokenised once, when it arrives). The engine records each node's share
(``Tree.rendered``/``obs``/``obs_ids``), so exports, the viewer and trainers read the exact context of any
node without knowing which environment made the tree. Stateful Gymnasium-style environments plug in through
``treepref.envs.gym.GymTextEnv``.
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
    text: str = ""  # the same context as text: the prompt, then every action as rendered and observation

    @property
    def depth(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Transition:
    state: State
    reward: float | None  # None: nothing to reward yet, or no reference to judge against
    terminated: bool
    truncated: bool
    info: dict = field(default_factory=dict)  # "success": the environment's own word on a final state
    observation: str = ""  # text the environment appended after the action (the end of ``state.text``)
    observation_ids: tuple[int, ...] = ()  # its ids (the end of ``state.token_ids``)


@runtime_checkable
class Environment(Protocol):
    """What a search needs from an environment. Optional attributes the engine reads with defaults:
    ``interactive`` (False: a Monte Carlo completion is one generation cut into steps by ``split``; True: it
    alternates action and ``step`` until the episode ends, because each action needs its observation),
    ``reward_range`` (the rewards ``step`` may give, checked by ``treepref check-env``), ``episode_stop``
    (stop strings after which nothing more belongs to the episode, so a Monte Carlo completion stops there:
    code's body is over at a line back at column 0), and ``messages(problem)`` (the prompt as chat messages,
    for the conversational export layout)."""

    stop: tuple[str, ...]  # stop strings that end one step of generation

    def initial(self, problem: Problem) -> State: ...

    def render(self, state: State) -> tuple[int, ...]:
        """The token ids the policy continues from this state (a child's are its parent's plus its step's)."""
        ...

    def render_text(self, state: State) -> str:
        """The same context as text (``state.text``): a child's is its parent's plus its action and observation."""
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


class EnvError(ValueError):
    """A bad environment name or option, or a user's environment that cannot be built, reset, stepped or
    asked: one line, naming where it came from."""


SUCCESS_KEYS = ("success", "is_success")  # treepref's own word, then Gymnasium's (``info["is_success"]``)


def is_success(reward: float | None, info: dict | None, threshold: float = 1.0) -> bool:
    """Whether a final state succeeded, by the first rule that applies (the one rule; searches, exports and
    the viewer all ask here): the environment's ``info["success"]``, else Gymnasium's ``info["is_success"]``,
    else reward ≥ ``threshold`` (``env.success``, default 1)."""
    for key in SUCCESS_KEYS:
        if info and info.get(key) is not None:
            return bool(info[key])
    return reward is not None and reward >= threshold


def success_rule(infos, threshold: float = 1.0) -> str:
    """Which rule of :func:`is_success` decided for final states with these ``info`` dicts, in words."""
    infos = [i for i in infos if i]
    for key, who in zip(SUCCESS_KEYS, ("the environment's", "Gymnasium's")):
        if any(i.get(key) is not None for i in infos):
            return f'info["{key}"] ({who} word)'
    return (f"reward >= {threshold:g} (env.success; the environment set neither info[\"success\"] nor "
            'info["is_success"])')
