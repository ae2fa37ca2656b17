"""Mid-search checkpoints: a run stopped in the middle of a long search resumes it from its last checkpoint,
and with a deterministic backend (the scripted policy, greedy hf) writes the tree an uninterrupted run
writes."""

from __future__ import annotations

import asyncio
import json

import pytest

from treepref.backends.base import Sampling
from treepref.backends.scripted import ScriptedPolicy
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.problems import Problem
from treepref.runner import Retry, checkpoint_path, run_problems, tree_path
from treepref.search.base import SearchContext
from treepref.search.mcts import MCTSConfig, mcts

PROBLEMS = [Problem("p1", "What is 1 + 1?", answer="2"), Problem("p2", "What is 2 + 1?", answer="3")]
NO_RETRY = Retry(retries=0)


def script(steps):
    """A deterministic tree: three ways on at every depth, answers near the bottom."""
    depth = len(steps)
    if depth >= 3:
        return ["The answer is 2.", "The answer is 3."]
    return [(f"step {depth} a", -1.0), (f"step {depth} b", -1.5), ("The answer is 3.", -2.0)]


async def exact(problem, answer):
    return 1.0 if answer.strip() == problem.answer else 0.0


class Crash(Exception):
    pass


class CrashingPolicy:
    """Delegates to ``inner`` and raises on every request after ``after`` of them: the run dies mid-search."""

    def __init__(self, inner, after: int):
        self.inner, self.after, self.calls = inner, after, 0

    async def generate(self, prompts, params):
        self.calls += 1
        if self.calls > self.after:
            raise Crash("the machine went away")
        return await self.inner.generate(prompts, params)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    async def generate(self, prompts, params):
        self.calls += 1
        return await self.inner.generate(prompts, params)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def context(policy) -> SearchContext:
    env = ReasoningEnv(template=plain_template, verifier=exact, system=None, max_depth=6)
    return SearchContext(env=env, policy=policy, sampling=Sampling(temperature=0.8, max_tokens=64),
                         rollout_max_tokens=96)


def trees_of(folder, problems=PROBLEMS) -> dict:
    out = {}
    for p in problems:
        data = json.loads(tree_path(folder, p.id).read_text())
        data["meta"].pop("wall_time_s")
        out[p.id] = data
    return out


def interrupted_then_resumed(make_policy, cfg, folder, after: int, problems=PROBLEMS, ctx_of=context):
    """Run until the policy dies after ``after`` requests, then resume with a working one; the resumed
    run's request count tells whether it started over."""
    first = asyncio.run(run_problems(problems, mcts, cfg, ctx_of(CrashingPolicy(make_policy(), after)),
                                     folder, concurrency=1, retry=NO_RETRY, progress=False))
    assert first.failed == len(problems)  # nothing finished: every search died mid-way
    saved = [checkpoint_path(folder, p.id).exists() for p in problems]
    counting = Counting(make_policy())
    second = asyncio.run(run_problems(problems, mcts, cfg, ctx_of(counting), folder, concurrency=1,
                                      retry=NO_RETRY, progress=False))
    assert second.failed == 0 and second.searched == len(problems)
    assert not any(checkpoint_path(folder, p.id).exists() for p in problems)  # the trees supersede them
    return saved, counting.calls


def uninterrupted(make_policy, cfg, folder, problems=PROBLEMS, ctx_of=context):
    counting = Counting(make_policy())
    asyncio.run(run_problems(problems, mcts, cfg, ctx_of(counting), folder, concurrency=1, progress=False))
    return counting.calls


def test_a_stopped_search_resumes_to_the_same_tree(tmp_path):
    cfg = MCTSConfig(simulations=12, k=3, n_rollouts=1, checkpoint_every=3)
    full_calls = uninterrupted(lambda: ScriptedPolicy(script), cfg, tmp_path / "a")
    # p1 dies after 14 requests (past its checkpoints); p2 then dies at its first
    saved, resumed_calls = interrupted_then_resumed(lambda: ScriptedPolicy(script), cfg, tmp_path / "b", after=14)
    assert saved == [True, False]
    assert trees_of(tmp_path / "b") == trees_of(tmp_path / "a")  # node for node, counts and values included
    assert resumed_calls < full_calls  # p1 went on from its checkpoint instead of starting over


def test_without_checkpoints_a_stopped_search_starts_over(tmp_path):
    cfg = MCTSConfig(simulations=12, k=3, n_rollouts=1)
    full_calls = uninterrupted(lambda: ScriptedPolicy(script), cfg, tmp_path / "a")
    saved, resumed_calls = interrupted_then_resumed(lambda: ScriptedPolicy(script), cfg, tmp_path / "b", after=14)
    assert saved == [False, False] and resumed_calls == full_calls
    assert trees_of(tmp_path / "b") == trees_of(tmp_path / "a")


def test_parallel_simulations_checkpoint_at_a_quiet_moment(tmp_path):
    """With several simulations in flight a checkpoint waits until none is: the saved tree holds no
    half-finished simulation, and the resumed search completes its budget."""
    cfg = MCTSConfig(simulations=12, k=3, n_rollouts=1, parallel_simulations=3, checkpoint_every=2)
    saved, _ = interrupted_then_resumed(lambda: ScriptedPolicy(script), cfg, tmp_path, after=10,
                                        problems=PROBLEMS[:1])
    assert saved == [True]
    data = json.loads(tree_path(tmp_path, "p1").read_text())
    assert data["meta"]["stats"]["simulations"] == 12


def test_a_fresh_run_ignores_an_old_checkpoint(tmp_path):
    cfg = MCTSConfig(simulations=12, k=3, n_rollouts=1, checkpoint_every=3)
    asyncio.run(run_problems(PROBLEMS[:1], mcts, cfg, context(CrashingPolicy(ScriptedPolicy(script), 14)), tmp_path,
                             concurrency=1, retry=NO_RETRY, progress=False))
    assert checkpoint_path(tmp_path, "p1").exists()
    counting = Counting(ScriptedPolicy(script))
    asyncio.run(run_problems(PROBLEMS[:1], mcts, cfg, context(counting), tmp_path, concurrency=1, resume=False,
                             progress=False))
    assert counting.calls == uninterrupted(lambda: ScriptedPolicy(script), cfg, tmp_path / "a", PROBLEMS[:1])


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    cfg = MCTSConfig(simulations=12, k=3, n_rollouts=1, checkpoint_every=3)
    asyncio.run(run_problems(PROBLEMS[:1], mcts, cfg, context(CrashingPolicy(ScriptedPolicy(script), 14)), tmp_path,
                             concurrency=1, retry=NO_RETRY, progress=False))
    other = MCTSConfig(simulations=12, k=2, n_rollouts=1, checkpoint_every=3)
    counting = Counting(ScriptedPolicy(script))
    asyncio.run(run_problems(PROBLEMS[:1], mcts, other, context(counting), tmp_path, concurrency=1, progress=False))
    assert counting.calls == uninterrupted(lambda: ScriptedPolicy(script), other, tmp_path / "a", PROBLEMS[:1])


def test_checkpoint_every_is_validated():
    with pytest.raises(ValueError, match="checkpoint_every"):
        MCTSConfig(checkpoint_every=0)


@pytest.mark.slow
def test_greedy_hf_resumes_to_the_same_tree(model_dir, tmp_path):
    from treepref.backends.hf import HFPolicy
    from treepref.domains.arithmetic import generate, worked_examples

    policy = HFPolicy(model_dir)
    problems = generate(1, seed=3, difficulty=2)  # greedy SmolLM2 writes two steps and the answer

    def ctx_of(p):
        env = ReasoningEnv(template=p.chat_prompt, verifier=exact, max_depth=5, few_shot=worked_examples(2))
        return SearchContext(env=env, policy=p, sampling=Sampling(temperature=0.0, max_tokens=40),
                             rollout_max_tokens=80)

    cfg = MCTSConfig(simulations=4, k=2, n_rollouts=1, checkpoint_every=1)
    full = uninterrupted(lambda: policy, cfg, tmp_path / "a", problems, ctx_of)
    saved, resumed = interrupted_then_resumed(lambda: policy, cfg, tmp_path / "b", full - 2, problems, ctx_of)
    assert saved == [True] and resumed < full
    assert trees_of(tmp_path / "b", problems) == trees_of(tmp_path / "a", problems)
