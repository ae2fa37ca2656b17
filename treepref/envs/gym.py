"""A stateful, Gymnasium-style text environment as a treepref environment: forkable by replay.

A user's class needs only ``reset(seed=None[, options=None]) -> (observation, info)`` and
``step(action) -> (observation, reward, terminated, truncated, info)`` with text observations and actions.
A tree branches from every node, so the adapter keeps the action prefix of each state (its ``data``) and
rebuilds a live environment for a prefix by resetting with the problem's seed and replaying the prefix. To
make that rare it caches, per prefix, the outcome of every action already taken and a few live
environments; an environment with ``clone()`` (or ``get_state()``/``set_state()``) is copied instead of
replayed. The class may declare the transcript settings as class attributes (``stop``, ``lead``,
``observation_format``, ``system``, ``reward_range``); the adapter reads them, so wrapping needs no code.

Each problem picks its task through ``reset``: ``meta["seed"]`` is the seed and ``meta["options"]`` the
``options=`` (a game, a level, a goal), so one class serves many tasks. Three optional instance methods, the
*hooks*, are called on a live environment and are all the adapter knows of a class beyond the contract:

- ``valid_actions() -> list[str]``: the actions that make sense now (after ``reset`` or the last ``step``);
  ``treepref check-env`` walks episodes with them.
- ``demonstrations() -> list[dict]``: worked episodes, each ``{"seed": ..., "options": ..., "actions":
  [...]}``, replayed and shown before the task exactly as real turns are rendered (``env.options.demos``
  may also name a JSONL file of them, or list them inline). A class attribute of the same list works too.
- ``success() -> bool | None``: after a step that ended the episode, whether the task was solved (None:
  let ``info`` or the reward decide); it becomes ``info["success"]``.

A hook that raises, a constructor that fails or a ``reset`` that raises is an ``EnvError``: one line that
names the class, the call and its arguments.
"""

from __future__ import annotations

import inspect
import json
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from treepref.envs.agent import AgentEnv, Outcome, demo_problems, why as _why
from treepref.envs.base import EnvError
from treepref.problems import Problem

SETTINGS = ("stop", "lead", "observation_format", "default_system", "reward_range")
HOOKS = ("valid_actions", "demonstrations", "success")  # the optional instance methods a class may offer


def _call(what: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``, with anything it raises made a one-line ``EnvError`` that says ``what``."""
    try:
        return fn(*args, **kwargs)
    except EnvError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure becomes one line naming the call
        raise EnvError(f"{what} raised {_why(exc)}") from None


def _args(**kwargs) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


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
        self._spare = self._new()  # built now, so a constructor that fails does before anything runs
        self._demos: list | None = None

    @property
    def name(self) -> str:
        return f"{self.factory.__module__}:{self.factory.__qualname__}"

    def hooks(self) -> list[str]:
        """The hooks (``HOOKS``) the class offers."""
        own = {h: getattr(self.factory, h, None) for h in HOOKS}
        return [h for h, v in own.items() if callable(v) or (h == "demonstrations" and isinstance(v, (list, tuple)))]

    def _new(self) -> Any:
        """A fresh object of the user's class (the spare built at start-up first)."""
        spare, self._spare = getattr(self, "_spare", None), None
        if spare is not None:
            return spare
        try:
            return self.factory(**self.env_kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's constructor: one line naming it and its options
            named = [f"env.options.{k}={v!r}" for k, v in self.env_kwargs.items()
                     if str(v) and str(v) in str(exc)]  # the option the message is about, where it quotes one
            options = ", ".join(named) or (_args(**self.env_kwargs) if self.env_kwargs else "no options")
            raise EnvError(f"environment {self.name!r} could not be built ({options}): {_why(exc)}") from None

    # -- hooks ------------------------------------------------------------------------------------
    def valid_actions(self, state) -> list[str]:
        """The class's ``valid_actions()`` at ``state`` (a live environment at its prefix is asked), else the
        older ``sample_actions(observation)`` where the class has one; [] when it offers neither."""
        episode: _Episode = state.data
        if callable(getattr(self.factory, "valid_actions", None)):
            env = self._take(episode)
            try:
                actions = _call(f"{self.name}.valid_actions() after {len(episode.actions)} action(s)",
                                env.valid_actions)
            finally:
                self._keep(episode, env)  # asked, not stepped: it still stands at this prefix
            return [str(a) for a in actions or ()]
        own = inspect.getattr_static(self.factory, "sample_actions", None)
        if own is None:
            return []
        if isinstance(own, (staticmethod, classmethod)):
            return list(_call(f"{self.name}.sample_actions()", getattr(self.factory, "sample_actions"), state.text))
        env = self._take(episode)
        try:
            return list(_call(f"{self.name}.sample_actions()", env.sample_actions, state.text))
        finally:
            self._keep(episode, env)

    sample_actions = valid_actions  # what ``check-env`` asked before ``valid_actions`` (kept for callers)

    def demonstrations(self, problem: Problem) -> list[tuple[Problem, list[str]]]:
        """The class's worked episodes (``demonstrations()`` or a class attribute of that name), as problems
        and their actions; one that replays the problem being solved is left out."""
        if self._demos is None:
            own = getattr(self.factory, "demonstrations", None)
            if own is None:
                self._demos = []
            else:
                if callable(own):
                    own = _call(f"{self.name}.demonstrations()", self._new().demonstrations)
                self._demos = demo_problems(own or [], f"{self.name}.demonstrations()")
        return [d for d in self._demos if not _same_task(d[0], problem)]

    def _success(self, env: Any) -> bool | None:
        hook = getattr(env, "success", None)
        if not callable(hook):
            return None
        out = _call(f"{self.name}.success()", hook)
        return None if out is None else bool(out)

    # -- the live environments ------------------------------------------------------------------
    def _reset(self, env: Any, episode: _Episode) -> tuple[Any, dict]:
        params = inspect.signature(env.reset).parameters
        what = f"{self.name}.reset({_args(seed=episode.seed, options=episode.options)})"
        takes = "options" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        if episode.options is not None and not takes:  # silently dropped, every task would be the same one
            raise EnvError(f"{what}: problem {episode.problem_id!r} has reset options but reset() takes no "
                           "`options` parameter")
        if takes:
            return _call(what, env.reset, seed=episode.seed, options=episode.options)
        return _call(what, env.reset, seed=episode.seed)

    def _step(self, env: Any, episode: _Episode, action: str) -> tuple:
        out = _call(f"{self.name}.step({action!r}) after {len(episode.actions)} action(s)", env.step, action)
        if not isinstance(out, tuple) or len(out) != 5:
            raise EnvError(f"{self.name}.step({action!r}) returned {type(out).__name__}, not (observation, "
                           "reward, terminated, truncated, info)")
        return out

    def fresh_episode(self, problem: Problem, actions: list[str]) -> tuple[str, list[tuple]]:
        """A new object of the class reset for ``problem`` and stepped through ``actions``, no cache involved:
        (the first observation, each step's (observation, reward, terminated, truncated)). The checks compare
        it with what the cached, replayed environment gave."""
        episode = self._episode(problem)
        env = self._new()
        first, _ = self._reset(env, episode)
        out = []
        for action in actions:
            obs, reward, terminated, truncated, _ = self._step(env, episode, self.clean(action))
            out.append((str(obs), None if reward is None else float(reward), bool(terminated), bool(truncated)))
            episode = episode.then(action)
            if terminated or truncated:
                break
        return str(first), out

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
        env = self._new()
        start = _Episode(episode.problem_id, episode.seed, episode.options)
        self._reset(env, start)
        for action in episode.actions:
            self._step(env, start, action)
            start = start.then(action)
        self.replays += 1
        return env

    def _copy(self, env: Any) -> Any | None:
        """A copy of a live environment where the class offers one (``clone``, or ``get_state``/``set_state``)."""
        if callable(getattr(env, "clone", None)):
            return env.clone()
        if callable(getattr(env, "get_state", None)) and callable(getattr(env, "set_state", None)):
            twin = self._new()
            twin.set_state(env.get_state())
            return twin
        return None

    def _keep(self, episode: _Episode, env: Any) -> None:
        self._live[episode.key] = env
        self._live.move_to_end(episode.key)
        while len(self._live) > self.live_cache:
            self._live.popitem(last=False)

    # -- AgentEnv ---------------------------------------------------------------------------------
    def _episode(self, problem: Problem) -> _Episode:
        options = problem.meta.get("options") if problem.meta else None
        return _Episode(problem.id, problem_seed(problem), options)

    def start(self, problem: Problem) -> tuple[_Episode, str]:
        episode = self._episode(problem)
        if episode.key not in self._starts:
            env = self._new()
            observation, _ = self._reset(env, episode)
            self._starts[episode.key] = (episode, str(observation))
            self._keep(episode, env)
        return self._starts[episode.key]

    def act(self, data: _Episode, action: str) -> Outcome:
        key = data.key + (action,)
        if key not in self._outcomes:
            env = self._take(data)
            observation, reward, terminated, truncated, info = self._step(env, data, action)
            after = data.then(action)
            info = _plain(info)
            if terminated or truncated:
                won = self._success(env)
                if won is not None:
                    info["success"] = won
            self._outcomes[key] = Outcome(after, str(observation), None if reward is None else float(reward),
                                          bool(terminated), bool(truncated), info)
            if not (terminated or truncated):
                self._keep(after, env)
        return self._outcomes[key]



def _same_task(a: Problem, b: Problem) -> bool:
    return problem_seed(a) == problem_seed(b) and (a.meta or {}).get("options") == (b.meta or {}).get("options")

