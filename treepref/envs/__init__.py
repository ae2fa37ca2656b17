"""Environments by name, for the CLI and YAML recipes; a module loads only when its name is asked for.

``env.name`` is a registered name or a user's class as ``package.module:ClassName``. A class with the
functional contract (``initial``/``render``/``step`` on immutable states, ``envs.base.Environment``) is
built with ``env.options`` as its keyword arguments; a stateful Gymnasium-style class (``reset``/``step``)
is wrapped by ``envs.gym.GymTextEnv`` and ``env.options`` are its constructor's arguments. Either way the
options are checked against what the class accepts before anything runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from treepref.envs.base import EnvError  # a bad name or option, or a user's env that fails: one line
from treepref.options import coerce, option_types
from treepref.registry import Registry

# A registered class may name the problems source its tasks come from (``default_problems``; else "seeds").
ENVS = Registry("environment", {
    "reasoning": "treepref.envs.reasoning:ReasoningEnv",
    "shop": "treepref.envs.shop:ShopEnv",
    "tools": "treepref.envs.tools:ToolEnv",
    "response": "treepref.envs.response:ResponseEnv",
    "code": "treepref.envs.code:CodeEnv",
}, inline=True, error=EnvError)

# What the engine sets itself (from the policy), never an option.
BOUND = ("template", "tokenizer", "factory", "env_kwargs")


def env_class(name: str, source: str = "<env>") -> type:
    """The class registered as ``name``, or ``module:Class`` imported."""
    obj = ENVS.get(name, source=source)
    if not isinstance(obj, type):
        raise EnvError(f"{source}: environment {name!r} is not a class, got {obj!r}")
    return obj


def default_problems(name: str, source: str = "<env>") -> str:
    """The problems source environment ``name``'s tasks come from: its class's ``default_problems``, else
    "seeds" (episodes reset with seeds, for a user's class)."""
    return getattr(env_class(name, source), "default_problems", "seeds")


def accepted_options(cls: type) -> dict[str, Any]:
    """Option name -> default for what ``cls`` accepts (dataclass fields, else constructor parameters)."""
    from treepref.envs.gym import is_stateful

    if dataclasses.is_dataclass(cls) and not is_stateful(cls):
        return {f.name: (f.default if f.default is not dataclasses.MISSING else None)
                for f in dataclasses.fields(cls) if f.name not in BOUND and f.init}
    params = inspect.signature(cls).parameters.values()
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_options(cls: type, options: dict, source: str, name: str) -> dict:
    """``options`` with unknown keys refused and each value ``options.coerce``d to the option's type."""
    known = accepted_options(cls)
    kinds = option_types(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
    out = {}
    for key, value in (options or {}).items():
        if key not in known and not takes_any:
            raise EnvError(f"{source}: unknown option env.options.{key} for environment {name!r}; "
                           f"known options: {', '.join(known) or 'none'}")
        out[key] = coerce(value, kinds.get(key), source=source, key=f"env.options.{key}", error=EnvError)
    return out


# A stateful class's settings the adapter takes (the rest go to the class's constructor).
ADAPTER = ("max_depth", "max_tokens", "system", "live_cache", "demos", "partial_actions")


def _split(cls: type, options: dict, source: str, name: str) -> tuple[dict, dict]:
    """(the class's own options, the adapter's) with each checked; the adapter's are empty for a
    functional class."""
    from treepref.envs.gym import GymTextEnv, is_stateful

    if not is_stateful(cls):
        return check_options(cls, options, source, name), {}
    own = {k: v for k, v in options.items() if k not in ADAPTER}
    adapter = {k: v for k, v in options.items() if k in ADAPTER}
    return check_options(cls, own, source, name), check_options(GymTextEnv, adapter, source, name)


def check_environment(name: str, options: dict, source: str = "<env>") -> None:
    """Raise ``EnvError`` unless ``name`` resolves and takes ``options`` (before a run starts)."""
    _split(env_class(name, source), options, source, name)


def build_env(name: str, options: dict | None = None, *, policy=None, source: str = "<env>"):
    """The environment ``name`` with ``options``, bound to ``policy``'s chat template and tokenizer."""
    cls = env_class(name, source)
    own, adapter = _split(cls, options or {}, source, name)
    bound = {}
    if policy is not None:
        bound = {"template": policy.chat_prompt, "tokenizer": policy if hasattr(policy, "encode") else None}
    from treepref.envs.gym import GymTextEnv, is_stateful

    try:
        if is_stateful(cls):
            return GymTextEnv(factory=cls, env_kwargs=own, **adapter, **bound)
        fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
        return cls(**own, **{k: v for k, v in bound.items() if k in fields})
    except EnvError as exc:
        raise EnvError(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise EnvError(f"{source}: environment {name!r}: {exc}") from None


def probe_env(name: str, options: dict | None, problems: list, source: str = "<env>") -> None:
    """Build ``name`` and reset it for the first of ``problems``, so a constructor or a ``reset`` that fails,
    or an environment that cannot judge here (``require_ready``: the code sandbox without its OS boundary), is
    one ``EnvError`` before a run starts (or a model loads), not a traceback or a failure in every search."""
    from treepref.envs.gym import is_stateful

    cls = env_class(name, source)
    if not is_stateful(cls):
        if hasattr(cls, "require_ready"):  # rewards that need something of the machine (the code sandbox)
            env = build_env(name, options, source=source)
            try:
                env.require_ready()
            except ValueError as exc:
                raise EnvError(f"{source}: environment {name!r}: {exc}") from None
        return  # the other built-in environments and functional classes build nothing that can fail here
    env = build_env(name, options, source=source)
    if problems:
        try:
            env.initial(problems[0])  # the reset, and the worked episodes replayed and rendered before it
        except EnvError as exc:
            raise EnvError(f"{source}: {exc}") from None
