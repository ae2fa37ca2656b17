"""Conformance checks every environment must pass (``treepref check-env``), run without a model.

A tree branches from every node and replays nothing, so an environment must be a pure function of its
states: the same state and action give the same result, stepping one branch never changes another, and a
child's context extends its parent's (the ids and the text the policy continued). Rewards lie in the
declared range, an episode is never both terminated and truncated, and every walk ends within its budget.

A stateful class behind ``envs.gym.GymTextEnv`` is also checked past the adapter's caches (which would
hide a ``reset`` that ignores its seed): the same seed on two fresh objects must give the same episode,
every walk is replayed on a fresh object and must match what the cached, replayed environment gave, and
seeds that always give the same episode are reported. Walks take the environment's valid actions
(``valid_actions``) where it offers them, and a few generic strings; an environment that offers none and
never ends an episode on its own is told to. The report counts endings by kind and rewards seen, and says
which success rule (``envs.base.is_success``) applies.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

from treepref.envs.base import EnvError, State, Transition, is_success, success_rule
from treepref.problems import Problem

# Tried beside an environment's own valid actions (alone where it offers none): an action somewhere, or nonsense.
GENERIC_ACTIONS = ("The answer is 4.", "2 + 2 = 4.", "search[red shirt]", "click[buy now]", "look", "???")


@dataclass
class Report:
    """What the checks found: ``failures`` is empty when the environment conforms."""

    env: str
    problems: int = 0
    steps: int = 0
    episodes_ended: int = 0
    failures: list[str] = field(default_factory=list)
    endings: Counter = field(default_factory=Counter)  # kind (ENDINGS) -> walks that ended so
    rewards: Counter = field(default_factory=Counter)  # reward -> steps that gave it (None: no reward)
    success_rule: str = ""
    actions: str = "generic"  # what the walks tried: "valid" (the environment's own, and generic) or "generic"
    hooks: list[str] | None = None  # a stateful class: the hooks (``envs.gym.HOOKS``) it offers
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        if message not in self.failures:
            self.failures.append(message)

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def lines(self) -> list[str]:
        """The report as ``treepref check-env`` prints it."""
        rewards = ", ".join(f"{_num(r)} ×{n}" for r, n in sorted(self.rewards.items(), key=_reward_order)[:12])
        endings = ", ".join(f"{n} {kind}" for kind, n in self.endings.most_common()) or "none"
        out = [f"treepref: {self.env}: {self.problems} problems, {self.steps} steps, {self.episodes_ended} "
               "episodes ended",
               f"  endings: {endings}",
               f"  rewards seen: {rewards or 'none'}",
               f"  success: {self.success_rule or 'no episode ended'}",
               "  actions tried: " + ("the environment's valid actions and generic strings" if self.actions == "valid"
                                      else "generic strings only (the environment offers no valid actions)")]
        if self.hooks is not None:
            from treepref.envs.gym import HOOKS

            missing = [h for h in HOOKS if h not in self.hooks]
            out.append(f"  hooks: {', '.join(self.hooks) or 'none'}" + (f" (not offered: {', '.join(missing)})"
                                                                       if missing else ""))
        out += [f"  note: {n}" for n in self.notes]
        out += [f"  FAIL {f}" for f in self.failures]
        out.append("treepref: conforms" if self.ok else f"treepref: {len(self.failures)} check(s) failed")
        return out


# How a walk ended: the first three are the environment's own word, the others a budget or the checker's.
ENDINGS = ("solved", "ended unsolved", "truncated by the environment", "max_depth", "max_tokens", "cut off",
           "not ended")


def _num(r) -> str:
    return "none" if r is None else f"{r:g}"


def _reward_order(item):
    return (item[0] is not None, item[0] if item[0] is not None else 0.0)


def ending(env, tr: Transition | None, threshold: float) -> str:
    """Which of ``ENDINGS`` a walk's last transition is."""
    if tr is None or not (tr.terminated or tr.truncated):
        return "not ended"
    if tr.terminated:
        return "solved" if is_success(tr.reward, tr.info, threshold) else "ended unsolved"
    if tr.info.get("cut_off"):
        return "cut off"
    if tr.state.depth >= getattr(env, "max_depth", float("inf")):
        return "max_depth"
    if tr.state.n_tokens >= getattr(env, "max_tokens", float("inf")):
        return "max_tokens"
    return "truncated by the environment"


def _same(a: Transition, b: Transition) -> bool:
    return (a.state.token_ids == b.state.token_ids and a.state.text == b.state.text and a.reward == b.reward
            and a.terminated == b.terminated and a.truncated == b.truncated and a.observation == b.observation)


def own_actions(env, state: State) -> list[str]:
    """The environment's valid actions at ``state`` (``valid_actions``, else ``sample_actions``), or []."""
    for name in ("valid_actions", "sample_actions"):
        if callable(getattr(env, name, None)):
            return [str(a) for a in getattr(env, name)(state) or ()]
    return []


def actions_for(env, state: State, rng: random.Random) -> list[str]:
    """Candidate actions at ``state``: the environment's own valid actions first, then generic ones."""
    generic = list(GENERIC_ACTIONS)
    rng.shuffle(generic)
    return own_actions(env, state) + generic[:2]


async def check_environment(env, problems: list[Problem], *, walks: int = 3, max_steps: int = 40,
                            seed: int = 0, success: float = 1.0) -> Report:
    """Run the conformance checks on ``env`` over ``problems`` (random walks of its valid actions).
    ``success``: the reward counted as solved where the environment does not say (``env.success``)."""
    report = Report(env=getattr(env, "name", type(env).__name__))
    rng = random.Random(seed)
    low, high = getattr(env, "reward_range", (float("-inf"), float("inf")))
    fresh = callable(getattr(env, "fresh_episode", None))  # a stateful class: checked past the caches too
    if callable(getattr(env, "hooks", None)):
        report.hooks = env.hooks()
    finals: list[dict] = []
    probe: list[str] | None = None  # one walk's actions, replayed from every seed
    episodes: dict[str, tuple] = {}  # problem id -> (its task, what the probe actions gave there)
    for problem in problems:
        report.problems += 1
        try:
            walked = await _check_problem(report, env, problem, rng, walks, max_steps, low, high, success, finals)
            if fresh:
                probe = probe if probe is not None else next((w for w in walked if w), [])
                first_obs, outcomes = env.fresh_episode(problem, probe)
                episodes[problem.id] = (_task(problem), (first_obs, tuple(outcomes)))
        except Exception as exc:  # noqa: BLE001 - the user's code: one line that says where, not a traceback
            report.fail(f"{problem.id}: {exc}" if isinstance(exc, EnvError) else
                        f"{problem.id}: {type(exc).__name__}: {' '.join(str(exc).split())}")
    tasks = {task for task, _ in episodes.values()}
    informative = report.actions == "valid" and not report.failures  # generic strings alone change nothing
    if informative and len(tasks) > 1 and len({outcome for _, outcome in episodes.values()}) == 1:
        report.note(f"all {len(tasks)} seeds gave the same episode for the same {len(probe or [])} action(s): "
                    "does reset use its seed? (fine for a game with no randomness)")
    report.success_rule = success_rule(finals, success) if finals else ""
    finished = report.endings["solved"] + report.endings["ended unsolved"]  # the task ended, not a budget
    if report.problems and not finished and not report.failures and report.actions == "generic":
        message = (f"could not reach an ending in {walks * report.problems} walks with generic strings only: "
                   "offer valid actions (a valid_actions() method on the environment)")
        report.fail(message) if fresh else report.note(message)  # a user's game: nothing was really checked
    elif report.problems and not finished and not report.failures:
        report.note("no walk ended the task (only budgets ended them)")
    return report


def _task(problem: Problem) -> tuple:
    meta = problem.meta or {}
    return (meta.get("seed", problem.id), repr(meta.get("options")))


async def _check_problem(report: Report, env, problem: Problem, rng: random.Random, walks: int, max_steps: int,
                         low: float, high: float, success: float, finals: list) -> list[list[str]]:
    """The walks from one problem; returns each walk's actions."""
    fresh = callable(getattr(env, "fresh_episode", None))
    first, again = env.initial(problem), env.initial(problem)
    if first.token_ids != again.token_ids or env.render_text(first) != env.render_text(again):
        report.fail(f"{problem.id}: initial() differs between two calls")
    if tuple(env.render(first)) != tuple(first.token_ids):
        report.fail(f"{problem.id}: render(state) is not the state's token ids")
    if fresh:  # two new objects, no cache between them
        one, two = env.fresh_episode(problem, [])[0], env.fresh_episode(problem, [])[0]
        if one != two:
            report.fail(f"{problem.id}: reset with the same seed gave different first observations on two fresh "
                        f"objects ({_diff(one, two)}): reset must seed every random choice it makes")
            fresh = False  # every replay would differ too: one reason is enough
    walked = []
    for _ in range(walks):
        state, last, taken = first, None, []
        for _ in range(max_steps):
            own = own_actions(env, state)
            if own:
                report.actions = "valid"
            generic = list(GENERIC_ACTIONS)
            rng.shuffle(generic)
            actions = own + generic[:2]
            action = rng.choice(actions)
            tr = await env.step(state, action)
            report.steps += 1
            report.rewards[tr.reward] += 1
            taken.append(action)
            twin = await env.step(state, action)
            if not _same(tr, twin):
                report.fail(f"{problem.id}: the same action from the same state gave different results "
                            f"({action!r})")
            other = rng.choice(actions)
            await env.step(state, other)  # a sibling branch in between must not change this one
            if not _same(tr, await env.step(state, action)):
                report.fail(f"{problem.id}: stepping a sibling ({other!r}) changed the result of {action!r}")
            _check_transition(report, env, problem, state, tr, low, high)
            state, last = tr.state, tr
            if tr.terminated or tr.truncated:
                break
        kind = ending(env, last, success)
        report.endings[kind] += 1
        ended = kind != "not ended"
        if ended:
            finals.append(last.info)
        report.episodes_ended += int(ended)
        if not ended and hasattr(env, "max_depth") and max_steps > env.max_depth:
            report.fail(f"{problem.id}: an episode ran {max_steps} steps past max_depth={env.max_depth}")
        if fresh and not await _compare_fresh(report, env, problem, first, taken):
            fresh = False  # one mismatch per problem says it
        walked.append(taken)
    return walked


async def _compare_fresh(report: Report, env, problem: Problem, first: State, actions: list[str]) -> bool:
    """Replay a walk on a fresh object (no cache) and compare it, step by step, with the walk through the
    adapter (``env.step`` again from the first state: its cached outcomes); False at a mismatch."""
    _, outcomes = env.fresh_episode(problem, actions)
    state = first
    for i, (action, (obs, reward, terminated, _)) in enumerate(zip(actions, outcomes)):
        tr = await env.step(state, action)
        seen = (tr.info.get("observation", ""), tr.reward, tr.terminated)
        if seen != (obs, reward, terminated):
            report.fail(f"{problem.id}: action {i + 1} ({action!r}) replayed on a fresh object gave "
                        f"{_brief(obs, reward, terminated)}, the walk gave {_brief(*seen)}: reset(seed) and step "
                        "must be deterministic")
            return False
        state = tr.state
    return True


def _diff(a: str, b: str, width: int = 30) -> str:
    """Where two texts first differ, a little of each from there."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lead = "..." if i > 10 else ""
    start = max(0, i - 10)
    return f"{lead}{a[start:start + width]!r} vs {lead}{b[start:start + width]!r}"


def _brief(obs: str, reward, terminated: bool) -> str:
    return f"({obs[:60]!r}, reward {_num(reward)}{', terminated' if terminated else ''})"


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
