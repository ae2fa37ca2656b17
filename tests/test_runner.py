"""The runner: many searches in flight, one failure isolated, atomic tree files, resume without duplicates."""

from __future__ import annotations

import asyncio
import json

import pytest

from treepref.backends.base import Sampling
from treepref.backends.scripted import EOS, ScriptedPolicy
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.problems import Problem
from treepref.runner import load_trees, run_problems, tree_path
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
