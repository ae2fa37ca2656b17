"""The LLM judge: pass rate from scripted verdicts (unparseable ones are missing), and the verdict parser."""

from __future__ import annotations

import asyncio

import pytest

from treepref.backends.scripted import ScriptedPolicy
from treepref.problems import Problem
from treepref.tree import ROOT, Tree
from treepref.verifiers.judge import LLMJudge, judge_nodes, parse_verdict

PROBLEM = Problem(id="p", prompt="What is 2 + 3?", answer="5")


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------- judge
VERDICTS = ["Looks right. Verdict: correct", "Verdict: incorrect", "I am not sure what to say.",
            "Fine. Verdict: correct"]


def test_judge_pass_rate_ignores_unparseable():
    policy = ScriptedPolicy(lambda steps: VERDICTS if steps == () else [])
    tree = Tree(problem_id="p", prompt=PROBLEM.prompt, answer="5")
    node = tree.add(ROOT, "2 + 3 = 5")
    [rate] = run(judge_nodes(tree, PROBLEM, [node], policy, k=4))
    assert rate == pytest.approx(2 / 3)  # 2 correct of 3 parsed; the rambling one is missing
    assert tree.scores[node]["judge"] == pytest.approx(2 / 3)
    assert tree.info[node]["judge"] == {"passed": 2, "parsed": 3, "total": 4}
    none = ScriptedPolicy(lambda steps: ["hmm"] if steps == () else [])
    assert run(judge_nodes(tree, PROBLEM, [node], none, k=2)) == [None]


@pytest.mark.parametrize("text,verdict", [
    ("Verdict: correct", True), ("verdict: Incorrect.", False), ("Verdict: not correct", False),
    ("The step is fine.\n[[correct]]", True), ("Score: 7/10", True), ("Score: 3/10", False),
    ("score: 0.2", False), ("Yes, it is right.", True), ("No.", False), ("It depends.", None),
    ("Verdict: correct\nOn reflection, Verdict: wrong", False),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


def test_llm_judge_as_outcome_verifier():
    policy = ScriptedPolicy(lambda steps: ["Verdict: correct", "Verdict: wrong"] if steps == () else [])
    assert run(LLMJudge(policy, k=4)(PROBLEM, "The answer is 5.")) == 0.5
