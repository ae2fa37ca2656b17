"""Conformance checks every environment must pass (``treepref check-env``), run without a model.

A tree branches from every node and replays nothing, so an environment must be a pure function of its
states: the same state and action give the same result, stepping one branch never changes another, and a
child's context extends its parent's (the ids and the text the policy continued). Rewards lie in the
declared range, an episode is never both terminated and truncated, and every walk ends within its budget.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from treepref.envs.base import State, Transition
from treepref.problems import Problem

# Tried where an environment offers no ``sample_actions``: text that is an action somewhere, or nonsense.
GENERIC_ACTIONS = ("The answer is 4.", "2 + 2 = 4.", "search[red shirt]", "click[buy now]", "look", "???")


@dataclass
class Report:
    """What the checks found: ``failures`` is empty when the environment conforms."""

    env: str
    problems: int = 0
    steps: int = 0
    episodes_ended: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        if message not in self.failures:
            self.failures.append(message)


def _same(a: Transition, b: Transition) -> bool:
    return (a.state.token_ids == b.state.token_ids and a.state.text == b.state.text and a.reward == b.reward
            and a.terminated == b.terminated and a.truncated == b.truncated and a.observation == b.observation)


def actions_for(env, state: State, rng: random.Random) -> list[str]:
    """Candidate actions at ``state``: the environment's own ``sample_actions`` first, then generic ones."""
    own = list(env.sample_actions(state)) if callable(getattr(env, "sample_actions", None)) else []
    generic = list(GENERIC_ACTIONS)
    rng.shuffle(generic)
    return own + generic[:2]


async def check_environment(env, problems: list[Problem], *, walks: int = 3, max_steps: int = 40,
                            seed: int = 0) -> Report:
    """Run the conformance checks on ``env`` over ``problems`` (random walks of its sample actions)."""
    report = Report(env=getattr(env, "name", type(env).__name__))
    rng = random.Random(seed)
    low, high = getattr(env, "reward_range", (float("-inf"), float("inf")))
    for problem in problems:
        report.problems += 1
        first, again = env.initial(problem), env.initial(problem)
        if first.token_ids != again.token_ids or env.render_text(first) != env.render_text(again):
            report.fail(f"{problem.id}: initial() differs between two calls")
        if tuple(env.render(first)) != tuple(first.token_ids):
            report.fail(f"{problem.id}: render(state) is not the state's token ids")
        for _ in range(walks):
            state, ended = first, False
            for _ in range(max_steps):
                actions = actions_for(env, state, rng)
                action = rng.choice(actions)
                tr = await env.step(state, action)
                report.steps += 1
                twin = await env.step(state, action)
                if not _same(tr, twin):
                    report.fail(f"{problem.id}: the same action from the same state gave different results "
                                f"({action!r})")
                other = rng.choice(actions)
                await env.step(state, other)  # a sibling branch in between must not change this one
                if not _same(tr, await env.step(state, action)):
                    report.fail(f"{problem.id}: stepping a sibling ({other!r}) changed the result of {action!r}")
                _check_transition(report, env, problem, state, tr, low, high)
                state = tr.state
                if tr.terminated or tr.truncated:
                    ended = True
                    break
            report.episodes_ended += int(ended)
            if not ended and hasattr(env, "max_depth") and max_steps > env.max_depth:
                report.fail(f"{problem.id}: an episode ran {max_steps} steps past max_depth={env.max_depth}")
    return report


def _check_transition(report: Report, env, problem: Problem, before: State, tr: Transition, low: float,
                      high: float) -> None:
    after = tr.state
    if after.token_ids[:len(before.token_ids)] != before.token_ids:
        report.fail(f"{problem.id}: a child's token ids do not extend its parent's")
    if not env.render_text(after).startswith(env.render_text(before)):
        report.fail(f"{problem.id}: a child's text does not extend its parent's")
    if tr.observation and not env.render_text(after).endswith(tr.observation):
        report.fail(f"{problem.id}: the observation is not the end of the child's text")
    if tr.observation_ids and tuple(after.token_ids[-len(tr.observation_ids):]) != tuple(tr.observation_ids):
        report.fail(f"{problem.id}: the observation's ids are not the end of the child's ids")
    if tr.terminated and tr.truncated:
        report.fail(f"{problem.id}: a transition is both terminated and truncated")
    if tr.reward is not None and not low <= tr.reward <= high:
        report.fail(f"{problem.id}: reward {tr.reward} outside reward_range ({low}, {high})")
    if after.depth != before.depth + 1:
        report.fail(f"{problem.id}: a step did not add one to the depth")


def check(env, problems: list[Problem], **kwargs) -> Report:
    """:func:`check_environment` from synchronous code."""
    return asyncio.run(check_environment(env, problems, **kwargs))
