"""MCTS-DPO's self-evaluation: how much the policy itself believes a step is correct.

After the question, the steps so far and the candidate step, the policy is asked whether the step is
correct, and we read the probability of two verdict continuations, G ("correct") and B ("incorrect"),
with the backend's ``score`` (per-token log-probs). Normalising over the two,

  p = P(G) / (P(G) + P(B)) = 1 / (1 + exp(log P(B) - log P(G))) = sigmoid(log P(G) - log P(B)),

where log P(X) is the sum of X's token log-probs. Computing it as a sigmoid of the difference keeps it
stable when both probabilities are tiny. MCTS-DPO mixes this value with the outcome reward.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Sequence

from treepref.problems import Problem
from treepref.tree import Tree

SCORE_KEY = "self_eval"

TEMPLATE = (
    "Question:\n{question}\n\n"
    "Steps so far:\n{steps}\n\n"
    "New step:\n{candidate}\n\n"
    "Is the new step correct? Answer with one word, correct or incorrect."
)


def two_way_probability(logprob_good: float, logprob_bad: float) -> float:
    """P(good) normalised over {good, bad}: sigmoid(logprob_good - logprob_bad)."""
    d = logprob_good - logprob_bad
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


def _total(lp) -> float:
    return float(sum(lp)) if isinstance(lp, (list, tuple)) else float(lp)


@dataclass
class SelfEvaluator:
    """Self-evaluation with ``policy.score(prompts, continuations)`` (sync or async; per-token log-probs
    or a summed log-prob per continuation)."""

    policy: object
    good: str = " correct"
    bad: str = " incorrect"
    template: str = TEMPLATE
    answer_prefix: str = "Answer:"  # written after the chat prompt so both verdicts start at the same place

    def prompt(self, problem: Problem, steps: Sequence[str], candidate: str) -> str:
        numbered = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) or "(none)"
        content = self.template.format(question=problem.question, steps=numbered, candidate=candidate)
        return self.policy.chat_prompt([{"role": "user", "content": content}]) + self.answer_prefix

    async def probabilities(self, items: Sequence[tuple[Problem, Sequence[str], str]]) -> list[float]:
        """P(correct) for each (problem, steps so far, candidate), scored as one batch."""
        if not items:
            return []
        prompts, conts = [], []
        for p, s, c in items:
            text = self.prompt(p, s, c)
            prompts += [text, text]
            conts += [self.good, self.bad]
        out = self.policy.score(prompts, conts)
        if inspect.isawaitable(out):
            out = await out
        lps = [_total(x) for x in out]
        return [two_way_probability(lps[2 * i], lps[2 * i + 1]) for i in range(len(items))]

    async def score_nodes(self, tree: Tree, problem: Problem, nodes: Sequence[int]) -> list[float]:
        """Self-evaluate each node's step given its prefix; record ``scores["self_eval"]``."""
        probs = await self.probabilities([(problem, tree.steps(tree.parent[n]), tree.text[n]) for n in nodes])
        for n, p in zip(nodes, probs):
            tree.scores[n][SCORE_KEY] = p
        return probs
