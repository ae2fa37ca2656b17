"""A stateful, Gymnasium-style text environment as a treepref environment: forkable by replay.

A user's class needs only ``reset(seed=None[, options=None]) -> (observation, info)`` and
``step(action) -> (observation, reward, terminated, truncated, info)`` with text observations and actions.
A tree branches from every node, so the adapter keeps the action prefix of each state (its ``data``) and
rebuilds a live environment for a prefix by resetting with the problem's seed and replaying the prefix. To
make that rare it caches, per prefix, the outcome of every action already taken and a few live
environments; an environment with ``clone()`` (or ``get_state()``/``set_state()``) is copied instead of
replayed. The class may declare the transcript settings as class attributes (``stop``, ``lead``,
``observation_format``, ``system``, ``reward_range``); the adapter reads them, so wrapping needs no code.
"""

from __future__ import annotations

import inspect
import json
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from treepref.envs.agent import AgentEnv, Outcome
from treepref.problems import Problem

SETTINGS = ("stop", "lead", "observation_format", "default_system", "reward_range")


def is_stateful(cls: Any) -> bool:
    """Whether ``cls`` follows the stateful contract (``reset``/``step``) rather than the functional one."""
    return callable(getattr(cls, "reset", None)) and callable(getattr(cls, "step", None)) \
        and not callable(getattr(cls, "initial", None))


def problem_seed(problem: Problem) -> int:
    """The seed a problem resets its environment with: ``meta["seed"]``, else a stable hash of its id."""
    seed = problem.meta.get("seed") if problem.meta else None
    return int(seed) if seed is not None else zlib.crc32(problem.id.encode())


def _plain(info: dict) -> dict:
    """The JSON-safe part of a step's ``info`` (it goes into the tree)."""
    out = {}
    for k, v in (info or {}).items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


@dataclass(frozen=True)
class _Episode:
    """An adapter state's data: which problem (seed and reset options) and the actions taken so far."""

    problem_id: str
    seed: int
    options: Any
    actions: tuple[str, ...] = ()

    def then(self, action: str) -> "_Episode":
        return _Episode(self.problem_id, self.seed, self.options, self.actions + (action,))

    @property
    def key(self) -> tuple:
        return (self.problem_id, self.seed, json.dumps(self.options, sort_keys=True, default=str), self.actions)


@dataclass
class GymTextEnv(AgentEnv):
    """Adapter: ``factory(**env_kwargs)`` builds one live environment of the user's class."""

    factory: Callable[..., Any] | None = None
    env_kwargs: dict = field(default_factory=dict)
    live_cache: int = 64  # live environments kept, keyed by action prefix (the rest are rebuilt by replay)

    def __post_init__(self) -> None:
        if self.factory is None:
            raise ValueError("GymTextEnv needs the environment class (factory)")
        for name in SETTINGS:  # the class's transcript settings win over the defaults
            if hasattr(self.factory, name):
                setattr(self, name, getattr(self.factory, name))
        if hasattr(self.factory, "system") and self.system is None:
            self.system = getattr(self.factory, "system")
        self._starts: dict[tuple, tuple[_Episode, str]] = {}
        self._outcomes: dict[tuple, Outcome] = {}
        self._live: OrderedDict[tuple, Any] = OrderedDict()
        self.replays = 0  # environments rebuilt by replaying a prefix (for tests and tuning)

    @property
    def name(self) -> str:
        return f"{self.factory.__module__}:{self.factory.__qualname__}"

    def sample_actions(self, state) -> list[str]:
        """Actions the checker may try: the class's own ``sample_actions(observation)`` where it has one."""
        own = getattr(self.factory, "sample_actions", None)
        return list(own(state.text)) if callable(own) else []

    # -- the live environments ------------------------------------------------------------------
    def _reset(self, env: Any, episode: _Episode) -> tuple[Any, dict]:
        params = inspect.signature(env.reset).parameters
        if "options" in params:
            return env.reset(seed=episode.seed, options=episode.options)
        return env.reset(seed=episode.seed)

    def _take(self, episode: _Episode) -> Any:
        """A live environment at ``episode``'s prefix that the caller may step (and so change)."""
        key = episode.key
        env = self._live.get(key)
        if env is not None:
            copy = self._copy(env)
            if copy is not None:
                return copy
            del self._live[key]  # it will be stepped: it no longer stands at this prefix
            return env
        env = self.factory(**self.env_kwargs)
        self._reset(env, _Episode(episode.problem_id, episode.seed, episode.options))
        for action in episode.actions:
            env.step(action)
        self.replays += 1
        return env

    def _copy(self, env: Any) -> Any | None:
        """A copy of a live environment where the class offers one (``clone``, or ``get_state``/``set_state``)."""
        if callable(getattr(env, "clone", None)):
            return env.clone()
        if callable(getattr(env, "get_state", None)) and callable(getattr(env, "set_state", None)):
            twin = self.factory(**self.env_kwargs)
            twin.set_state(env.get_state())
            return twin
        return None

    def _keep(self, episode: _Episode, env: Any) -> None:
        self._live[episode.key] = env
        self._live.move_to_end(episode.key)
        while len(self._live) > self.live_cache:
            self._live.popitem(last=False)

    # -- AgentEnv ---------------------------------------------------------------------------------
    def start(self, problem: Problem) -> tuple[_Episode, str]:
        options = problem.meta.get("options") if problem.meta else None
        episode = _Episode(problem.id, problem_seed(problem), options)
        if episode.key not in self._starts:
            env = self.factory(**self.env_kwargs)
            observation, _ = self._reset(env, episode)
            self._starts[episode.key] = (episode, str(observation))
            self._keep(episode, env)
        return self._starts[episode.key]

    def act(self, data: _Episode, action: str) -> Outcome:
        key = data.key + (action,)
        if key not in self._outcomes:
            env = self._take(data)
            observation, reward, terminated, truncated, info = env.step(action)
            after = data.then(action)
            info = _plain(info)
            self._outcomes[key] = Outcome(after, str(observation), None if reward is None else float(reward),
                                          bool(terminated), bool(truncated), info)
            if not (terminated or truncated):
                self._keep(after, env)
        return self._outcomes[key]

