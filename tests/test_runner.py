"""The runner: many searches in flight, one failure isolated, atomic tree files, resume without duplicates."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from treepref.backends.base import Sampling
from treepref.backends.scripted import EOS, ScriptedPolicy
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.problems import Problem
from treepref.runner import Retry, load_trees, run_problems, tree_path
from treepref.search.base import SearchContext, expand, new_tree
from treepref.tree import Tree, atomic_write_text


async def exact(problem, answer):
    return float(answer == problem.answer)


def make_ctx():
    policy = ScriptedPolicy(lambda steps: ["1 + 1 = 2", "The answer is 2." + EOS] if len(steps) < 2 else
                            ["The answer is 2." + EOS])
    env = ReasoningEnv(template=plain_template, verifier=exact, max_depth=4)
    return SearchContext(env=env, policy=policy, sampling=Sampling(max_tokens=16))


class Recorder:
    """A search plug that expands the root once and notes how many searches run at once."""

    def __init__(self, fail: set[str] = frozenset()):
        self.fail = set(fail)
        self.running = 0
        self.peak = 0
        self.seen: list[str] = []

    async def __call__(self, problem, ctx, cfg):
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.seen.append(problem.id)
        try:
            await asyncio.sleep(0.01)
            if problem.id in self.fail:
                raise RuntimeError(f"boom on {problem.id}")
            tree, states = new_tree(problem, ctx, "recorder", {})
            await expand(tree, states, 0, ctx, k=cfg)
            return tree
        finally:
            self.running -= 1


def problems(n):
    return [Problem(id=f"p/{i}", prompt=f"What is 1 + 1? ({i})", answer="2") for i in range(n)]


def test_concurrency_failure_isolation_and_resume(tmp_path):
    ctx = make_ctx()
    search = Recorder(fail={"p/2"})
    summary = asyncio.run(run_problems(problems(6), search, 2, ctx, tmp_path, concurrency=3, progress=False))
    assert search.peak == 3  # the gate holds, and the searches really overlap
    assert (summary.searched, summary.failed, summary.resumed) == (5, 1, 0)
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [e["problem_id"] for e in errors] == ["p/2"] and "boom on p/2" in errors[0]["error"]
    trees = load_trees(tmp_path)
    assert sorted(t.problem_id for t in trees) == [f"p/{i}" for i in range(6) if i != 2]
    # Each tree counts what its own search generated (two completions of the root here).
    for t in trees:
        assert t.meta["generated_tokens"] == sum(t.n_tokens) > 0
        assert t.meta["delimiter"] == "\n\n"
    assert summary.generated_tokens == sum(t.meta["generated_tokens"] for t in trees)

    # Rerun: only the failed problem is searched again; nothing is duplicated.
    search2 = Recorder()
    summary2 = asyncio.run(run_problems(problems(6), search2, 2, ctx, tmp_path, concurrency=3, progress=False))
    assert search2.seen == ["p/2"]
    assert (summary2.searched, summary2.resumed, summary2.failed) == (1, 5, 0)
    assert len(list((tmp_path / "trees").glob("*.json"))) == 6
    assert not list((tmp_path / "trees").glob(".*"))  # no temporary files left behind


def test_tree_file_names_are_safe_and_unique(tmp_path):
    a, b = tree_path(tmp_path, "a/b"), tree_path(tmp_path, "a_b")
    assert a != b and "/" not in a.name
    assert tree_path(tmp_path, "plain-id_1.x").name == "plain-id_1.x.json"


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "t.json"
    atomic_write_text(path, "old")

    with pytest.raises(TypeError):
        atomic_write_text(path, 12345)  # type: ignore[arg-type]  (fails inside the write)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_tree_round_trip_and_networkx(tmp_path):
    t = Tree(problem_id="x", prompt="q", answer="2")
    a = t.add(0, "step a", n_tokens=3, logprob=-1.5)
    b = t.add(a, "The answer is 2.", terminated=True, reward=1.0)
    t.backup(b, 1.0)
    t.save(tmp_path / "x.json")
    u = Tree.load(tmp_path / "x.json")
    assert u.to_dict() == t.to_dict()
    assert u.steps(b) == ["step a", "The answer is 2."] and u.value(a) == 1.0
    g = u.to_networkx()
    assert list(g.successors(0)) == [a] and g.nodes[b]["reward"] == 1.0 and g.nodes[a]["value"] == 1.0


class Flaky:
    """A policy wrapper whose requests fail: the first ``fail_first`` of all, and every one whose prompt
    contains ``always`` (a problem the backend cannot serve), or that never answers for ``hang``."""

    def __init__(self, inner, fail_first: int = 0, always: str | None = None, hang: str | None = None):
        self.inner, self.fail_first, self.always, self.hang = inner, fail_first, always, hang
        self.calls = 0
        self.max_context = None

    async def generate(self, prompts, params):
        self.calls += 1
        text = "".join(self.inner.decode(p) if not isinstance(p, str) else p for p in prompts)
        if self.calls <= self.fail_first or (self.always and self.always in text):
            raise RuntimeError("engine hiccup")
        if self.hang and self.hang in text:
            await asyncio.sleep(3600)
        return await self.inner.generate(prompts, params)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def flaky_ctx(**kwargs):
    ctx = make_ctx()
    return dataclasses.replace(ctx, policy=Flaky(ctx.policy, **kwargs))


def errors_of(out):
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def test_a_backend_error_is_retried_with_backoff_then_the_run_goes_on(tmp_path):
    ctx = flaky_ctx(fail_first=2)
    retry = Retry(retries=2, backoff_s=0.01)
    summary = asyncio.run(run_problems(problems(3), Recorder(), 2, ctx, tmp_path, concurrency=1, retry=retry,
                                       progress=False))
    assert (summary.searched, summary.failed, summary.retries) == (3, 0, 2)
    assert not (tmp_path / "errors.jsonl").exists()


def test_a_request_that_keeps_failing_fails_only_its_problem_with_the_reason(tmp_path):
    ctx = flaky_ctx(always="(1)")
    retry = Retry(retries=2, backoff_s=0.0)
    summary = asyncio.run(run_problems(problems(3), Recorder(), 2, ctx, tmp_path, concurrency=3, retry=retry,
                                       progress=False))
    assert (summary.searched, summary.failed, summary.retries) == (2, 1, 2)
    [error] = errors_of(tmp_path)
    assert error["problem_id"] == "p/1" and error["reason"] == "backend" and error["retries"] == 2
    assert "engine hiccup" in error["error"]
    assert summary.failures == [{"problem_id": "p/1", "reason": "backend", "error": "RuntimeError: engine hiccup"}]
    assert sorted(t.problem_id for t in load_trees(tmp_path)) == ["p/0", "p/2"]


def test_bad_input_is_not_retried_and_a_search_bug_is_not_a_backend_failure(tmp_path):
    class Rejects(Flaky):
        async def generate(self, prompts, params):
            self.calls += 1
            raise ValueError("bad sampling settings")

    ctx = make_ctx()
    ctx = dataclasses.replace(ctx, policy=Rejects(ctx.policy))
    summary = asyncio.run(run_problems(problems(1), Recorder(), 2, ctx, tmp_path / "a", retry=Retry(retries=3),
                                       progress=False))
    assert summary.failed == 1 and ctx.policy.calls == 1 and summary.retries == 0
    assert errors_of(tmp_path / "a")[0]["reason"] == "backend"
    asyncio.run(run_problems(problems(2), Recorder(fail={"p/0"}), 2, make_ctx(), tmp_path / "b", progress=False))
    assert errors_of(tmp_path / "b")[0]["reason"] == "search"


def test_a_request_that_never_answers_times_out_and_fails_its_problem_alone(tmp_path):
    ctx = flaky_ctx(hang="(0)")
    retry = Retry(retries=1, backoff_s=0.0, timeout_s=0.2)
    summary = asyncio.run(run_problems(problems(2), Recorder(), 2, ctx, tmp_path, concurrency=2, retry=retry,
                                       progress=False))
    assert (summary.searched, summary.failed) == (1, 1)
    [error] = errors_of(tmp_path)
    assert error["problem_id"] == "p/0" and error["reason"] == "timeout" and error["retries"] == 1
    assert "took over 0.2 s" in error["error"]


def test_a_prompt_too_long_for_the_context_is_refused_before_the_backend_sees_it(tmp_path):
    ctx = flaky_ctx()
    long_problem = Problem(id="long", prompt="What is 1 + 1? " + "word " * 500, answer="2")
    ctx.policy.max_context = 400
    summary = asyncio.run(run_problems([long_problem, *problems(2)], Recorder(), 2, ctx, tmp_path,
                                       retry=Retry(retries=2, backoff_s=0.0), progress=False))
    assert (summary.searched, summary.failed, summary.retries) == (2, 1, 0)
    [error] = errors_of(tmp_path)
    n = len(ctx.env.initial(long_problem).token_ids)
    assert n > 500 and error["problem_id"] == "long" and error["reason"] == "context_length"
    assert f"problem long: its prompt of {n} tokens does not fit the model's context of 400 tokens" in error["error"]
    assert ctx.policy.calls == 2  # the two good problems' requests only
