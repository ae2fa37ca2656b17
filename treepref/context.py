"""A search's context from a recipe: the environment around a policy, and the sampling settings.

Its own module so that the pipeline and the Ray executor's actors (which the pipeline starts) both build it
the same way without importing each other.
"""

from __future__ import annotations

from treepref.config import Config, SamplingSection


def build_context(cfg: Config, policy):
    """The environment and sampling settings of a config, around an existing policy."""
    from treepref.config import env_settings
    from treepref.envs import build_env

    env = build_env(cfg.env.name, env_settings(cfg), policy=policy, source=cfg.source)
    return search_context(env, policy, cfg.sampling, cfg.env.success)


def search_context(env, policy, sampling: SamplingSection, success: float = 1.0):
    """A ``SearchContext`` from a recipe's ``sampling`` section: one request's settings, and the completions'."""
    from treepref.backends.base import Sampling
    from treepref.search.base import SearchContext

    s = sampling
    params = Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)
    return SearchContext(env=env, policy=policy, sampling=params, rollout_max_tokens=s.rollout_max_tokens,
                         rollout_by_step=s.rollout_by_step, success=success)
