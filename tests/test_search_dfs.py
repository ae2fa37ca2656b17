"""DFSDT on the tools environment with a scripted agent: order, pruning, backtracking, budgets, backups."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest

from test_search_common import PlainPolicy
from treepref.backends.base import Completion
from treepref.backends.scripted import ScriptedPolicy
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.envs.tools import ToolEnv
from treepref.problems import Problem
from treepref.search.base import SearchContext
from treepref.search.dfs import DFSConfig, dfs
from treepref.tokens import PLAIN
from treepref.tree import ROOT, STEP

TASK = Problem("t", "How many miles is 42 km? Round to 2 decimal places.", answer="26.1")


def convert(a: str, b: str) -> str:
    return f'Action: convert_units\nAction Input: {{"value": 42, "from": "{a}", "to": "{b}"}}\n'


def answer(x: str) -> str:
    return f'Action: give_answer\nAction Input: {{"answer": "{x}"}}\n'


class AgentScript(PlainPolicy):
    """A policy with the backend interface that writes scripted actions, each tagged ``[label]`` in its
    Thought. ``script`` maps the labels on the path so far to ``(label, logprob)`` candidates; successive
    requests for the same path continue through its candidates, so a re-expanded node gets new children."""

    def __init__(self, script: dict, actions: dict[str, str]):
        self.script, self.actions = script, actions
        self.asked: Counter = Counter()
        self.requests: list[tuple[str, ...]] = []

    async def generate(self, prompts, params):
        return [[self._one(p, params) for _ in range(params.n)] for p in prompts]

    def _one(self, prompt, params) -> Completion:
        text = prompt if isinstance(prompt, str) else PLAIN.decode(prompt)
        path = tuple(re.findall(r"\[(\w+)\]", text.rpartition("<assistant>\n")[2]))
        if not self.asked[path] or self.requests[-1] != path:
            self.requests.append(path)
        cands = self.script[path]
        label, lp = cands[self.asked[path] % len(cands)]
        self.asked[path] += 1
        out = f" [{label}] step\n{self.actions[label]}" + params.stop[0]
        ids = tuple(PLAIN.encode(out))
        return Completion(out, ids, lp, "stop", params.stop[0], tuple([lp / len(ids)] * len(ids)))


def run(script, actions, **cfg):
    policy = AgentScript(script, actions)
    ctx = SearchContext(env=ToolEnv(max_depth=6), policy=policy)
    return asyncio.run(dfs(TASK, ctx, DFSConfig(**cfg))), policy


def node(tree, *labels) -> int:
    """The node reached by the path of labels."""
    cur = ROOT
    for lab in labels:
        cur = next(c for c in tree.children(cur) if tree.text[c].startswith(f"[{lab}]"))
    return cur


def pruned(tree, n) -> bool:
    return bool(tree.info[n].get("pruned"))


# The higher-prior first branch converts the wrong way and ends wrong; the second converts right.
ACTIONS = {"A": convert("mi", "km"), "A1": answer("67.59"), "A2": "Action: give_up\nAction Input: {}\n",
           "B": convert("km", "mi"), "B1": answer("26.10"), "B2": 'Action: calculator\nAction Input: 42 / 1.609\n',
           "B2a": answer("26.1"), "B2b": answer("30")}
SCRIPT = {(): [("A", -1.0), ("B", -3.0)], ("A",): [("A1", -1.0), ("A2", -2.0)],
          ("B",): [("B1", -1.0), ("B2", -2.0)], ("B", "B2"): [("B2a", -1.0), ("B2b", -2.0)]}


def test_a_failed_branch_is_kept_pruned_and_the_search_backtracks_to_the_root():
    tree, policy = run(SCRIPT, ACTIONS)
    a, a1, a2 = node(tree, "A"), node(tree, "A", "A1"), node(tree, "A", "A2")
    b, b1, b2 = node(tree, "B"), node(tree, "B", "B1"), node(tree, "B", "B2")
    assert tree.prior[a] > tree.prior[b]  # A was tried first because the policy preferred it
    assert tree.meta["expansion_order"] == [ROOT, a, b]
    assert policy.requests == [(), ("A",), ("B",)]
    assert all(pruned(tree, n) for n in (a, a1, a2))
    assert tree.reward[a1] == 0.0 and tree.info[a2]["gave_up"]
    assert tree.terminated[b1] and tree.reward[b1] == 1.0 and tree.info[b1]["success"]
    assert not any(pruned(tree, n) for n in (ROOT, b, b1, b2))
    assert tree.meta["stats"] == {"nodes": 6, "successes": 1, "pruned": 3, "backtracks": 1, "expansions": 3,
                                  "found": True}
    # nothing after the success: its expansion was the last request, and B2 was never expanded
    assert tree.meta["policy_requests"] == 3 and not tree.children(b2, kind=None)


def test_each_final_outcome_is_backed_up_once():
    tree, _ = run(SCRIPT, ACTIONS)
    finals = [n for n in tree.nodes(STEP) if tree.is_final(n)]
    assert all(tree.visits[n] == 1 for n in finals)
    assert tree.visits[ROOT] == len(finals) == 3
    assert tree.value(node(tree, "A")) == 0.0 and tree.value(node(tree, "B")) == 1.0
    assert tree.value(node(tree, "B", "B2")) is None  # never finished


def test_without_stopping_the_search_goes_on_after_a_success():
    tree, policy = run(SCRIPT, ACTIONS, stop_at_first_success=False)
    b2 = node(tree, "B", "B2")
    assert policy.requests == [(), ("A",), ("B",), ("B", "B2")]
    assert tree.meta["stats"]["successes"] == 2
    assert not pruned(tree, b2) and not pruned(tree, node(tree, "B"))
    assert pruned(tree, node(tree, "B", "B2", "B2b")) and not pruned(tree, node(tree, "B", "B2", "B2a"))
    assert tree.value(b2) == 0.5


# A deeper failure: the search must back up only to the nearest node that can still try something (A),
# not to the root. A may have 3 children, so after A1 fails it gets a third child, which succeeds.
DEEP_ACTIONS = {"A": convert("km", "mi"), "A1": 'Action: calculator\nAction Input: 26.0976 * 2\n',
                "A2": answer("99"), "A3": answer("26.1"), "X": answer("52.2"),
                "Y": "Action: give_up\nAction Input: {}\n", "Z": answer("0"), "B": convert("km", "ft")}
DEEP = {(): [("A", -1.0), ("B", -2.0)], ("A",): [("A1", -1.0), ("A2", -2.0), ("A3", -3.0)],
        ("A", "A1"): [("X", -1.0), ("Y", -2.0), ("Z", -3.0)]}


def test_backtracking_goes_to_the_nearest_node_with_children_left():
    tree, policy = run(DEEP, DEEP_ACTIONS, max_children=3)
    a, a1, a2, a3, b = (node(tree, "A"), node(tree, "A", "A1"), node(tree, "A", "A2"), node(tree, "A", "A3"),
                        node(tree, "B"))
    # root -> A -> A1 (2 children, then a third), all fail -> back to A, which gets its third child
    assert tree.meta["expansion_order"] == [ROOT, a, a1, a1, a]
    assert policy.requests == [(), ("A",), ("A", "A1"), ("A",)]
    assert len(tree.children(a1)) == 3 and all(pruned(tree, c) for c in tree.children(a1))
    assert pruned(tree, a1) and pruned(tree, a2)
    assert tree.reward[a3] == 1.0 and not pruned(tree, a3) and not pruned(tree, a)
    assert not pruned(tree, b) and not tree.children(b)  # never needed
    assert tree.meta["stats"]["backtracks"] == 1


def test_the_node_budget_is_respected():
    # every step is a new, non-final calculator call: the search would never end on its own
    class Endless(AgentScript):
        def _one(self, prompt, params):
            text = prompt if isinstance(prompt, str) else PLAIN.decode(prompt)
            depth = len(re.findall(r"\[(\w+)\]", text.rpartition("<assistant>\n")[2]))
            self.asked[depth] += 1
            label = f"n{depth}x{self.asked[depth]}"
            self.actions[label] = f"Action: calculator\nAction Input: {self.asked[depth]} + {depth}\n"
            self.script = {}
            out = f" [{label}] step\n{self.actions[label]}" + params.stop[0]
            ids = tuple(PLAIN.encode(out))
            return Completion(out, ids, -1.0, "stop", params.stop[0], ())

    def search(max_nodes):
        ctx = SearchContext(env=ToolEnv(max_depth=4), policy=Endless({}, {}))
        return asyncio.run(dfs(TASK, ctx, DFSConfig(k=2, max_children=2, max_nodes=max_nodes)))

    for max_nodes in (1, 4, 7, 29):  # the whole budget is spent, never more; unfinished nodes are not failures
        tree = search(max_nodes)
        assert tree.meta["stats"]["nodes"] == len(tree.nodes(STEP)) - 1 == max_nodes
        assert tree.meta["stats"]["successes"] == 0 and not pruned(tree, tree.children(ROOT)[-1])
    # a budget above what the tree can hold (depth 4, 2 children each: 2+4+8+16 = 30): every branch fails
    tree = search(40)
    assert len(tree.nodes(STEP)) - 1 == 30 and all(pruned(tree, n) for n in tree.nodes(STEP)[1:])
    assert tree.meta["stats"]["backtracks"] == 2 + 4 + 8  # every non-final node failed and was left


def test_the_token_budget_stops_the_search():
    tree, policy = run(SCRIPT, ACTIONS, token_budget=1)
    assert tree.meta["expansion_order"] == [ROOT] and len(tree) == 3
    assert not any(pruned(tree, n) for n in tree.nodes(STEP))  # unexplored, not failed


def test_config_checks():
    for bad in ({"k": 0}, {"max_nodes": 0}, {"max_children": 0}, {"token_budget": 0}):
        with pytest.raises(ValueError):
            DFSConfig(**bad)


def test_dfs_on_the_reasoning_env():
    async def exact(problem, text):
        return 1.0 if text.strip() == problem.answer else 0.0

    script = {(): ["A", "B"], ("A",): ["The answer is 9.", "The answer is 7."], ("B",): ["The answer is 2."]}
    env = ReasoningEnv(template=plain_template, verifier=exact, system=None, max_depth=4)
    ctx = SearchContext(env=env, policy=ScriptedPolicy(script))
    tree = asyncio.run(dfs(Problem("p", "What is 1 + 1?", answer="2"), ctx, DFSConfig(k=2)))
    a, b = tree.children(ROOT)
    assert [tree.text[a], tree.text[b]] == ["A", "B"]
    assert pruned(tree, a) and all(pruned(tree, c) for c in tree.children(a))
    (right,) = tree.children(b)
    assert tree.reward[right] == 1.0 and not pruned(tree, right) and not pruned(tree, b)
    assert tree.meta["expansion_order"] == [ROOT, a, b]
