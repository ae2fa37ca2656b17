"""Shared pieces of the search tests (a scripted world with known answers), and the search registry tests."""

from __future__ import annotations

import asyncio

import pytest

from treepref.backends.scripted import ScriptedPolicy
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.problems import Problem
from treepref.search import SEARCHES, build_config, get_config_class, get_search
from treepref.search.base import SearchContext
from treepref.tokens import PLAIN
from treepref.tree import STEP, Tree

PROBLEM = Problem("p1", "What is 1 + 1?", answer="2")


class Env(ReasoningEnv):
    """The reasoning env as it is (the tests pass an exact-string verifier, so no math verifier runs)."""


async def exact(problem: Problem, answer: str) -> float:
    return 1.0 if answer.strip() == problem.answer else 0.0


class SlowPolicy:
    """Wraps a policy so every request yields to the event loop, letting concurrent searches interleave.

    ``snapshots`` records, at each request, the (steps, is_step_request) of every request then in flight.
    """

    def __init__(self, inner: ScriptedPolicy, ticks: int = 3):
        self.inner, self.ticks = inner, ticks
        self.in_flight: list[tuple] = []
        self.snapshots: list[list[tuple]] = []

    def chat_prompt(self, messages):
        return self.inner.chat_prompt(messages)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    async def generate(self, prompts, params):
        keys = [(self.inner._steps(p), bool(params.stop)) for p in prompts]
        self.in_flight.extend(keys)
        self.snapshots.append(list(self.in_flight))
        for _ in range(self.ticks):
            await asyncio.sleep(0)
        for k in keys:
            self.in_flight.remove(k)
        return await self.inner.generate(prompts, params)


class PlainPolicy:
    """The backend interface on the toy PLAIN tokenizer and the plain chat template; a test's own policy
    subclasses it and writes ``generate``."""

    def chat_prompt(self, messages):
        return plain_template(messages)

    def encode(self, text):
        return PLAIN.encode(text)

    def decode(self, ids):
        return PLAIN.decode(ids)

    def count_tokens(self, text):
        return len(PLAIN.encode(text))


def make_ctx(script, *, max_depth: int = 6, slow: bool = False, step_check: str | None = None) -> SearchContext:
    policy = ScriptedPolicy(script)
    env = Env(template=plain_template, verifier=exact, system=None, max_depth=max_depth, step_check=step_check)
    return SearchContext(env=env, policy=SlowPolicy(policy) if slow else policy)


def slips_first():
    """A script whose root's first request (k = 2: the script is asked once per sample) writes two slips; any
    later one writes the right step, then the answer."""
    asked = []

    def script(steps):
        if steps:
            return ["The answer is 2."]
        asked.append(1)
        return ["1 + 1 = 3", "1 + 1 = 4"] if len(asked) <= 2 else ["1 + 1 = 2"]
    return script


def step_requests(policy: ScriptedPolicy) -> list[tuple[str, ...]]:
    """The states that were expanded (one-step requests), in request order."""
    return [policy._steps(p) for prompts, params in policy.calls if params.stop for p in prompts]


def node_by_steps(tree: Tree, steps: list[str]) -> int:
    [node] = [i for i in tree.nodes(STEP) if tree.steps(i) == steps]
    return node


def check_visits(tree: Tree) -> None:
    """Every backup passes once through each node above where it ended: a node's visits are the backups
    that ended at it plus its children's visits (so never fewer than theirs), and a final node has no
    children. Completions end their backups below the node they valued, so "ended at it" may be 0."""
    for i in tree.nodes(STEP):
        kids = tree.children(i)
        assert tree.visits[i] >= sum(tree.visits[c] for c in kids), i
        if tree.is_final(i):
            assert not kids, i


def run(coro):
    return asyncio.run(coro)


# -- the registry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_every_registered_search_loads_and_runs(name):
    fn, cls = get_search(name), get_config_class(name)
    ctx = make_ctx({(): ["The answer is 2."]})
    tree = run(fn(PROBLEM, ctx, cls()))
    assert tree.meta["search"] == name
    assert any(tree.terminated[i] and tree.reward[i] == 1.0 for i in tree.nodes(STEP))
    assert tree.meta["generated_tokens"] > 0


def test_get_search_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown search 'mtcs'.*mcts"):
        get_search("mtcs")
    with pytest.raises(ValueError, match="unknown search 'mtcs'"):
        get_config_class("mtcs")


def test_build_config_builds_and_names_the_source():
    cfg = build_config("mcts", {"simulations": 8, "c_puct": 2}, "configs/x.yaml")
    assert cfg.simulations == 8 and cfg.c_puct == 2.0 and isinstance(cfg.c_puct, float)
    with pytest.raises(ValueError, match=r"configs/x.yaml.*unknown option 'simulation'"):
        build_config("mcts", {"simulation": 8}, "configs/x.yaml")
    with pytest.raises(ValueError, match=r"configs/x.yaml: search.options.k: expected int, got 'four'"):
        build_config("beam", {"k": "four"}, "configs/x.yaml")
    with pytest.raises(ValueError, match=r"configs/x.yaml: search.options.stop_at_correct: expected bool, got 'yes'"):
        build_config("best_first", {"stop_at_correct": "yes"}, "configs/x.yaml")
    with pytest.raises(ValueError, match=r"configs/x.yaml.*MCTSConfig.simulations must be >= 1"):
        build_config("mcts", {"simulations": 0}, "configs/x.yaml")
    with pytest.raises(ValueError, match=r"configs/x.yaml.*unknown search"):
        build_config("dijkstra", {}, "configs/x.yaml")


def test_build_config_imports_a_named_scorer():
    cfg = build_config("beam", {"scorer": "test_search_common:exact"}, "r.yaml")
    assert cfg.scorer is exact
    with pytest.raises(ValueError, match="r.yaml: search.options.scorer: function 'no_such_module_xyz:f': "
                                         "no module named"):
        build_config("beam", {"scorer": "no_such_module_xyz:f"}, "r.yaml")


def check_golden(tree, path) -> None:
    """``tree`` matches the golden file in every column, meta key and setting the file has (the files predate
    the text columns ``rendered``/``obs``/``obs_ids``, ``meta.messages``, MCTS's ``discount`` and ``rewiden``
    settings and its ``rewidened`` count: the search itself must not have changed), and its recorded text is
    exactly what its ids spell at every node."""
    import json
    import os

    from treepref.tokens import PLAIN

    got = json.loads(json.dumps(tree.to_dict()))
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(path.read_text())
    assert {k: got[k] for k in want if k not in ("columns", "meta")} == {k: v for k, v in want.items()
                                                                          if k not in ("columns", "meta")}
    settings = want["meta"].pop("settings")  # new options (``discount``) may have been added, at their defaults
    assert {k: got["meta"]["settings"][k] for k in settings} == settings
    if "stats" in want["meta"]:  # counters added since (``rewidened``) are left out, as new settings are
        stats = want["meta"].pop("stats")
        assert {k: got["meta"]["stats"][k] for k in stats} == stats
    assert {k: got["meta"][k] for k in want["meta"]} == want["meta"]
    assert {c: got["columns"][c] for c in want["columns"]} == want["columns"]
    for node in range(len(tree)):
        assert tree.prompt_text(node) == PLAIN.decode(tree.prompt_ids(node))
