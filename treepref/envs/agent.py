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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from treepref.envs.base import EnvError, State, Transition
from treepref.envs.reasoning import plain_template
from treepref.problems import Problem
from treepref.tokens import PLAIN, Piece, Tokenizer, spelled, step_ids


def why(exc: BaseException) -> str:
    """An exception as one line: its type and message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    demos: int | str | list = 1  # worked episodes shown before the task as earlier chat turns: how many of the
    # environment's own (0: none), or a JSONL file of them, or a list ({"seed", "options", "actions"} or
    # {"id", "question", "meta", "actions"} each); rendered by the code that renders real turns
    partial_actions: bool = False  # an action the generation cut off (max_tokens, no stop string) is sent to
    # ``act`` anyway; by default it is not: the node is truncated with no observation

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
        for demo, actions in self.demo_episodes(problem):
            data, first = self.start(demo)
            msgs.append({"role": "user", "content": self.task_text(demo, first)})
            msgs.append({"role": "assistant", "content": self.transcript(data, actions, demo)})
        return msgs + [{"role": "user", "content": self.task_text(problem, observation)}]

    def demo_episodes(self, problem: Problem) -> list[tuple[Problem, list[str]]]:
        """The worked episodes shown before ``problem``: ``demos`` of the environment's own, or those of the
        file or list ``demos`` names (one played on ``problem`` itself is left out)."""
        if isinstance(self.demos, int):
            return self.demonstrations(problem)[: self.demos]
        if getattr(self, "_demo_rows", None) is None or self._demo_rows[0] is not self.demos:
            self._demo_rows = (self.demos, demo_problems(self.demos, "env.options.demos"))
        meta = problem.meta or {}
        return [(d, acts) for d, acts in self._demo_rows[1]
                if not (d.id == problem.id or ("seed" in d.meta and d.meta["seed"] == meta.get("seed")
                                               and d.meta.get("options") == meta.get("options")))]

    def transcript(self, data: Any, actions: list[str], problem: Problem | None = None) -> str:
        """An episode as the policy would see it, made by the code that makes real turns (``advance``): the
        lead, each action with its stop string, each observation (none after the last action)."""
        state = State(problem=problem or Problem("demo", ""), data=data, text=self.lead)
        for action in actions:
            tr = self.advance(state, action, demo=True)
            if tr.terminated or tr.truncated:
                state = tr.state
                break
            state = tr.state
        else:  # the episode goes on after the last action shown: its observation is not part of it
            state = State(state.problem, state.steps, state.n_tokens, state.data, (),
                          state.text[: len(state.text) - len(tr.observation)] if actions else state.text)
        return state.text.rstrip()

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

    def _written(self, action: str) -> str:
        for s in self.stop:
            if s and action.endswith(s):
                return action[: -len(s)]
        return action

    async def step(self, state: State, action: str, *, token_ids: Sequence[int] | None = None,
                   ended: bool = False) -> Transition:
        return self.advance(state, action, token_ids=token_ids, ended=ended)

    def cut_off(self, action: str, token_ids: Sequence[int] | None, ended: bool) -> bool:
        """Whether generation stopped inside the action (its token budget ran out): generated ids, no end of
        sequence and no stop string at its end."""
        return (token_ids is not None and not ended and bool(self.stop)
                and not any(s and action.endswith(s) for s in self.stop))

    def advance(self, state: State, action: str, *, token_ids: Sequence[int] | None = None, ended: bool = False,
                demo: bool = False) -> Transition:
        """One turn, the one way a turn is rendered (real steps and worked episodes alike): the action as the
        policy wrote it, then the observation and the lead. ``demo``: a worked episode's action, written as
        given (its leading space kept, as a model writes it) and shown whole (``max_depth`` and ``max_tokens``
        do not end it). An action cut off mid-generation is not acted on (unless ``partial_actions``): the
        node is truncated, with no reward and no observation."""
        text = self.clean(action)
        cut = not self.partial_actions and self.cut_off(action, token_ids, ended)
        if token_ids is None:  # an action given as text: as the policy would have written it, stop included
            rendered = (self._written(action) if demo else text) + self.stop[0]
            token_ids = step_ids(self.tokens, rendered)
        else:  # as the policy wrote it: the text its ids spell, stop string included
            rendered = spelled(self.tokens, token_ids, action)
        out = Outcome(state.data, "", None, False, True, {"cut_off": True}) if cut else self.act(state.data, text)
        n_tokens = state.n_tokens + len(token_ids)
        depth = state.depth + 1
        over = not demo and (depth >= self.max_depth or n_tokens >= self.max_tokens)
        truncated = not out.terminated and (out.truncated or over)
        final = out.terminated or truncated
        observation = "" if final else self.observation_format.format(observation=out.observation) + self.lead
        obs_ids = tuple(step_ids(self.tokens, observation)) if observation else ()
        new = State(state.problem, state.steps + (text,), n_tokens, out.data,
                    state.token_ids + tuple(token_ids) + obs_ids, state.text + rendered + observation)
        info = {**out.info} if cut else {"observation": out.observation, **out.info}
        return Transition(new, out.reward, out.terminated, truncated, info, observation, obs_ids)

    def split(self, text: str, token_ids: Sequence[int], token_logprobs: Sequence[float] = (),
              logprob: float = 0.0) -> list[Piece]:
        """One action per generation (rollouts of an interactive environment go turn by turn)."""
        return [Piece(text, tuple(token_ids), logprob, True)] if text.strip() or token_ids else []


def demo_problems(rows: Any, source: str) -> list[tuple[Problem, list[str]]]:
    """Worked episodes as (problem, actions): each row ``{"actions": [...]}`` with the task it was played on
    (``seed`` and ``options``, or ``id``/``question``/``meta`` for any agent environment). ``rows`` is a
    list of such rows or the path of a JSONL file of them; a bad row is an ``EnvError`` naming it."""
    where = source
    if isinstance(rows, str):
        path, where = Path(rows), rows
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise EnvError(f"env.options.demos: cannot read {rows!r} ({why(exc)})") from None
        rows = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise EnvError(f"{where}:{n}: not a JSON object ({exc})") from None
    if not isinstance(rows, (list, tuple)):
        raise EnvError(f"{where}: worked episodes must be a list of {{'seed', 'options', 'actions'}} rows, "
                       f"got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows, 1):
        actions = row.get("actions") if isinstance(row, dict) else None
        if not isinstance(actions, (list, tuple)) or not actions or not all(isinstance(a, str) for a in actions):
            raise EnvError(f"{where}: episode {i} needs `actions`, a non-empty list of strings")
        meta = dict(row.get("meta") or {})
        for key in ("seed", "options"):
            if row.get(key) is not None:
                meta[key] = row[key]
        out.append((Problem(str(row.get("id", f"demo-{i}")), str(row.get("question", "")), meta=meta),
                    list(actions)))
    return out
