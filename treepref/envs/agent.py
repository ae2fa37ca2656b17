"""Agent environments as a transcript: the policy writes an action, the environment answers with an observation.

The whole episode is one assistant turn that keeps growing (the ReAct layout WebShop and ToolBench agents are
prompted with): the chat template renders the task once, then each step appends the action exactly as the
policy generated it and the observation the environment returns, tokenised once when it arrives. So a
child's context is always its parent's plus new text, and the ids the policy continued are the ids recorded.

A concrete environment subclasses :class:`AgentEnv` and writes two pure functions over its own immutable
``data``: ``start(problem) -> (data, first observation)`` and ``act(data, action) -> Outcome``. Everything
about text, ids, budgets and the tree is done here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from treepref.envs.base import State, Transition
from treepref.envs.reasoning import plain_template
from treepref.problems import Problem
from treepref.tokens import PLAIN, Piece, Tokenizer, spelled, step_ids


@dataclass(frozen=True)
class Outcome:
    """What one action did: the environment's new data, what it shows next, and how the episode stands."""

    data: Any
    observation: str
    reward: float | None = None
    terminated: bool = False
    truncated: bool = False
    info: dict = field(default_factory=dict)


@dataclass
class AgentEnv:
    """The transcript bookkeeping every agent environment shares; subclasses set the class attributes below
    and implement ``start`` and ``act``.

    ``template`` renders chat messages (the policy's ``chat_prompt``); ``tokenizer`` left None is bound to the
    policy's by ``SearchContext``. A path is truncated after ``max_depth`` actions or ``max_tokens`` generated
    tokens, or when ``act`` says so.
    """

    template: Callable[[list[dict]], str] = plain_template
    tokenizer: Tokenizer | None = None
    system: str | None = None  # None: the environment's own ``default_system``
    max_depth: int = 10
    max_tokens: int = 1024
    demos: int = 1  # worked episodes shown before the task as earlier chat turns (0: none)

    # -- what a subclass declares -----------------------------------------------------------------
    interactive = True  # a Monte Carlo completion alternates actions and observations
    reward_range: tuple[float, float] = (0.0, 1.0)
    default_system: str = ""
    stop: tuple[str, ...] = ("\n",)  # ends one action (kept in the context, as the policy wrote it)
    lead: str = "Action:"  # opens every action, after the prompt and every observation (no trailing space: a
    # text ending in a space is a token boundary the model never writes; it writes the space with the word)
    observation_format: str = "Observation: {observation}\n\n"

    def start(self, problem: Problem) -> tuple[Any, str]:
        """The environment's initial data for ``problem`` and the first observation (shown with the task)."""
        raise NotImplementedError

    def act(self, data: Any, action: str) -> Outcome:
        """Apply one parsed action to ``data`` (never mutate it: states are shared by a tree's branches)."""
        raise NotImplementedError

    def demonstrations(self, problem: Problem) -> list[tuple[Problem, list[str]]]:
        """Worked episodes for ``problem``'s prompt: (another problem, the actions that solve it, each as the
        policy would write it before the stop string). None by default; small models need them to learn
        the action format, as WebShop's and ToolBench's prompted agents do."""
        return []

    def task_text(self, problem: Problem, observation: str) -> str:
        """The user message: the task, then the first observation (alone when the problem has no text: an
        environment whose first observation states the task)."""
        if not problem.question.strip():
            return observation.strip() + "\n"
        return f"{problem.question}\n\n{self.observation_format.format(observation=observation)}".rstrip() + "\n"

    # -- the contract -----------------------------------------------------------------------------
    @property
    def tokens(self) -> Tokenizer:
        return self.tokenizer if self.tokenizer is not None else PLAIN

    def messages(self, problem: Problem) -> list[dict]:
        """The prompt as chat messages: the system message, the worked episodes (each a user turn with its
        task and an assistant turn with its transcript, as this environment renders it), then the task."""
        return self._messages(problem, self.start(problem)[1])

    def _messages(self, problem: Problem, observation: str) -> list[dict]:
        system = self.default_system if self.system is None else self.system
        msgs = [{"role": "system", "content": system}] if system else []
        for demo, actions in self.demonstrations(problem)[: self.demos]:
            data, first = self.start(demo)
            msgs.append({"role": "user", "content": self.task_text(demo, first)})
            msgs.append({"role": "assistant", "content": self.transcript(data, actions)})
        return msgs + [{"role": "user", "content": self.task_text(problem, observation)}]

    def transcript(self, data: Any, actions: list[str]) -> str:
        """An episode as the policy would see it: the lead, each action with its stop string, each
        observation (none after the last action)."""
        text = self.lead
        for i, action in enumerate(actions):
            out = self.act(data, self.clean(action + self.stop[0]))
            text += action + self.stop[0]
            if i < len(actions) - 1:
                text += self.observation_format.format(observation=out.observation) + self.lead
            data = out.data
        return text.rstrip()

    def initial(self, problem: Problem) -> State:
        data, observation = self.start(problem)
        text = self.template(self._messages(problem, observation)) + self.lead
        return State(problem=problem, data=data, token_ids=tuple(self.tokens.encode(text)), text=text)

    def render(self, state: State) -> tuple[int, ...]:
        return state.token_ids

    def render_text(self, state: State) -> str:
        return state.text

    def clean(self, action: str) -> str:
        """The action as ``act`` reads it: without the stop string that ended it and outer whitespace."""
        for s in self.stop:
            if s and action.endswith(s):
                action = action[: -len(s)]
                break
        return action.strip()

    async def step(self, state: State, action: str, *, token_ids: Sequence[int] | None = None,
                   ended: bool = False) -> Transition:
        text = self.clean(action)
        if token_ids is None:  # an action given as text: as the policy would have written it, stop included
            rendered = text + self.stop[0]
            token_ids = step_ids(self.tokens, rendered)
        else:  # as the policy wrote it: the text its ids spell, stop string included
            rendered = spelled(self.tokens, token_ids, action)
        out = self.act(state.data, text)
        n_tokens = state.n_tokens + len(token_ids)
        depth = state.depth + 1
        truncated = not out.terminated and (out.truncated or depth >= self.max_depth or n_tokens >= self.max_tokens)
        final = out.terminated or truncated
        observation = "" if final else self.observation_format.format(observation=out.observation) + self.lead
        obs_ids = tuple(step_ids(self.tokens, observation)) if observation else ()
        new = State(state.problem, state.steps + (text,), n_tokens, out.data,
                    state.token_ids + tuple(token_ids) + obs_ids, state.text + rendered + observation)
        info = {"observation": out.observation, **out.info}
        return Transition(new, out.reward, out.terminated, truncated, info, observation, obs_ids)

    def split(self, text: str, token_ids: Sequence[int], token_logprobs: Sequence[float] = (),
              logprob: float = 0.0) -> list[Piece]:
        """One action per generation (rollouts of an interactive environment go turn by turn)."""
        return [Piece(text, tuple(token_ids), logprob, True)] if text.strip() or token_ids else []
