"""Every registered environment passes the conformance checks (``treepref check-env``), and the checks fail
for environments that break the contract."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from treepref.cli import main
from treepref.envs import ENVS, build_env, default_problems
from treepref.envs.agent import AgentEnv, Outcome
from treepref.envs.check import check
from treepref.domains import build_problems
from treepref.problems import Problem


@pytest.mark.parametrize("name", sorted(ENVS))
def test_every_registered_environment_conforms(name):
    env = build_env(name)
    problems, errors = build_problems(default_problems(name), count=5)
    assert problems and not errors
    report = check(env, problems, walks=4)
    assert report.ok, report.failures
    assert report.steps >= 20 and report.episodes_ended == 20  # every walk ended within its budget


@pytest.mark.parametrize("name", sorted(ENVS))
def test_check_env_command(name, capsys):
    assert main(["check-env", name, "--count", "2"]) == 0
    assert "conforms" in capsys.readouterr().out


@dataclass
class Mutating(AgentEnv):
    """Broken on purpose: its data is a list that ``act`` appends to, so branches share and change it."""

    def start(self, problem):
        return [], "Say anything."

    def act(self, data, action):
        data.append(action)
        return Outcome(data, f"you said {len(data)} things", reward=float(len(data)))


@dataclass
class Endless(AgentEnv):
    """Broken on purpose: never ends and ignores ``max_depth``."""

    max_depth: int = 3

    def start(self, problem):
        return 0, "Go."

    def act(self, data, action):
        return Outcome(data + 1, "again")

    async def step(self, state, action, **kw):
        tr = await super().step(state, action, **kw)
        from dataclasses import replace

        return replace(tr, truncated=False)


def test_the_checker_catches_shared_state_and_rewards_out_of_range():
    failures = check(Mutating(), [Problem("p", "talk")]).failures
    assert any("different results" in f for f in failures)
    assert any("reward_range" in f for f in failures)


def test_the_checker_catches_an_episode_that_never_ends():
    failures = check(Endless(), [Problem("p", "go")], max_steps=8).failures
    assert any("past max_depth" in f for f in failures)


def test_check_env_reports_failures_and_bad_names(capsys):
    assert main(["check-env", "test_env_contract:Mutating", "--problems", "seeds", "--count", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["check-env", "nope"]) == 2
    assert "unknown environment 'nope'" in capsys.readouterr().err
