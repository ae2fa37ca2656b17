"""Pieces every exporter shares: the pair record, value readers, prompt rendering and tree walks.

Prompts and completions are the text the tree recorded (``Tree.prompt_text``, ``Tree.rendered``): what
the environment showed the policy and what the policy wrote, so a pair's prompt is the text of what the
policy continued when it sampled the two steps, and its ids are ``Tree.prompt_ids`` (re-tokenising the
text can change the step boundary).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from treepref.envs.base import is_success
from treepref.envs.reasoning import DEFAULT_SYSTEM
from treepref.few_shot import load_shots, shot_messages
from treepref.problems import Problem
from treepref.tree import ROOT, Tree

Template = Callable[[list[dict]], str]
ValueReader = Callable[[Tree, int], "float | None"]

LAYOUTS = ("standard", "conversational")
BUILTIN_VALUES = ("value", "mc", "reward")
DERIVED = ("advantage", "prover_value")  # score keys also read where a final step implies them
OUTCOME = "outcome"  # stepwise only: each step labelled by its path's end (extract.stepwise), no node value
CONSENSUS = "consensus"  # the Monte Carlo value where a second signal agrees with its label (extract.labels)


@dataclass(frozen=True)
class Pair:
    """One preference between two children of ``parent``; ``strategy`` names the rule that chose it."""

    parent: int
    chosen: int
    rejected: int
    chosen_value: float | None
    rejected_value: float | None
    strategy: str

    @property
    def margin(self) -> float | None:
        if self.chosen_value is None or self.rejected_value is None:
            return None
        return self.chosen_value - self.rejected_value


def value_reader(name: str) -> ValueReader:
    """The node value a rule reads: ``value`` (backed-up mean), ``mc``, ``reward`` or a ``scores`` key.

    A score key may be written plainly (``prm``) or as ``scores.prm`` (needed if it clashes with a
    built-in name). Nodes without that value read as None. ``consensus`` is the Monte Carlo value of the
    steps whose label a second signal confirms (``extract.labels``), None elsewhere. ``advantage`` and
    ``prover_value`` (what the advantage evaluator recorded, ``verifiers.progress``) are also read for final
    steps, from their outcome, so a right answer ranks against its siblings; ``scores.advantage`` reads only
    what was recorded.
    """
    if name in DERIVED:
        from treepref.verifiers import progress

        return getattr(progress, name)
    if name == CONSENSUS:
        from treepref.extract.labels import consensus_value

        return consensus_value
    if name == "value":
        return lambda tree, node: tree.value(node)
    if name == "mc":
        return lambda tree, node: tree.mc_value(node)
    if name == "reward":
        return lambda tree, node: tree.reward[node]
    key = name[len("scores."):] if name.startswith("scores.") else name
    if not key:
        raise ValueError("empty score name in value='scores.'")
    return lambda tree, node: tree.scores[node].get(key)


def check_value_name(name: str, trees: list[Tree]) -> None:
    """Raise if ``name`` is neither built in nor a score key any node of ``trees`` carries."""
    if name in BUILTIN_VALUES or name == OUTCOME:
        return
    if name == CONSENSUS:
        from treepref.extract.labels import has_second_signal

        if trees and not has_second_signal(trees):
            raise ValueError("value='consensus' keeps a Monte Carlo label where a second signal agrees, and no "
                             "step has one: run with an env.step_check or a judge evaluator (scores['judge'])")
        return
    key = name[len("scores."):] if name.startswith("scores.") else name
    if trees and not any(key in s for t in trees for s in t.scores):
        raise ValueError(f"unknown value {name!r}: not one of {BUILTIN_VALUES} and no node has a score "
                         f"named {key!r}")


@dataclass(frozen=True)
class Prompter:
    """How rows render prompts and completions: from the text the tree recorded, whatever environment made it.

    ``standard``: ``prompt`` is the context as text (``Tree.prompt_text``: the chat-templated prompt, then
    every action as the policy wrote it and every observation after it) and a completion is its action as
    written (stop string included), so ``prompt + chosen`` is exactly the child's context and spells exactly
    ``prompt_ids + chosen_ids``. ``conversational``: ``prompt`` is the chat messages the environment rendered
    (``tree.meta["messages"]``) plus a partial assistant message holding the prefix (absent at depth 1), and
    completions are one-message lists ``[{"role": "assistant", ...}]``.

    Trees written before environments recorded their text are rendered the reasoning environment's way
    (``template`` over the problem's messages, steps joined by ``delimiter``), with the system message,
    delimiter and examples the tree's meta records (``for_tree``).
    """

    template: Template | None = None  # only for trees without recorded text
    layout: str = "standard"
    system: str | None = DEFAULT_SYSTEM
    delimiter: str = "\n\n"
    few_shot: tuple = ()  # treepref.few_shot.Shot examples the search put before each problem

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {LAYOUTS}")

    def for_tree(self, tree: Tree) -> "Prompter":
        """This prompter with the setup an older tree was rendered with (its meta wins over this prompter's)."""
        if tree.has_text or "system" not in tree.meta:
            return self
        return replace(self, system=tree.meta["system"], delimiter=tree.meta.get("delimiter", self.delimiter),
                       few_shot=load_shots(tree.meta.get("few_shot"), f"tree {tree.problem_id}"))

    def messages(self, tree: Tree) -> list[dict]:
        if "messages" in tree.meta:
            return [dict(m) for m in tree.meta["messages"]]
        return problem_of(tree).messages(self.system, shot_messages(self.few_shot, self.delimiter))

    def action(self, tree: Tree, node: int) -> str:
        """A step's text as it reads in the context (the action as written, stop string included)."""
        return tree.rendered[node] if tree.has_text else tree.text[node] + self.delimiter

    def transcript(self, tree: Tree, nodes: list[int], *, last_obs: bool = True) -> str:
        """Consecutive nodes as they read in the context: each action, then the observation after it (the
        last node's observation only with ``last_obs``)."""
        if not tree.has_text:
            return self.joined([tree.text[n] for n in nodes])
        return "".join(tree.rendered[n] + (tree.obs[n] if last_obs or i < len(nodes) - 1 else "")
                       for i, n in enumerate(nodes))

    def response(self, tree: Tree, nodes: list[int]) -> str:
        """A whole response (the path to a final node): its transcript without anything after the last step
        (older trees: the steps joined by the delimiter)."""
        if not tree.has_text:
            return self.delimiter.join(tree.text[n] for n in nodes)
        return self.transcript(tree, nodes, last_obs=False)

    def joined(self, steps: list[str]) -> str:
        return "".join(s + self.delimiter for s in steps)

    def prompt(self, tree: Tree, node: int):
        """The context at ``node`` (the prefix a pair of its children continues)."""
        path = tree.path(node)
        if self.layout == "standard":
            if tree.has_text:
                return tree.prompt_text(node)
            if not callable(self.template):
                raise ValueError("a tree without recorded text needs a template in the standard layout: a "
                                 "callable messages -> str (policy.chat_prompt, or template_from_tokenizer(path))")
            return self.template(self.messages(tree)) + self.transcript(tree, path)
        msgs = self.messages(tree)
        return msgs + [{"role": "assistant", "content": self.transcript(tree, path)}] if path else msgs

    def question_prompt(self, tree: Tree):
        """The prompt without any steps (for whole-response formats)."""
        return self.prompt(tree, ROOT)

    def completion(self, text: str):
        return text if self.layout == "standard" else [{"role": "assistant", "content": text}]


def problem_of(tree: Tree) -> Problem:
    return Problem(id=tree.problem_id, prompt=tree.prompt, answer=tree.answer)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings, in characters."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def best_leaf(tree: Tree, node: int, kids: dict[int, list[int]] | None = None) -> int:
    """The descendant leaf (any kind, rollouts included) that ends best; ``node`` itself if a leaf.

    Best = highest reward among terminated leaves; a leaf without a reward ranks below every rewarded
    one; ties go to the leaf created first.
    """
    kids = kids if kids is not None else tree.children_map()
    best, best_key, stack = node, None, [node]
    while stack:
        n = stack.pop()
        if kids[n]:
            stack.extend(kids[n])
            continue
        r = tree.reward[n]
        key = (tree.terminated[n] and r is not None, r if r is not None else 0.0, -n)
        if best_key is None or key > best_key:
            best, best_key = n, key
    return best


def success_nodes(tree: Tree, success: float = 1.0, kind: str | None = "step") -> set[int]:
    """Nodes on a successful path: ancestors (and self) of a terminated node of ``kind`` that succeeded
    (``envs.base.is_success``: the environment's word, or reward ≥ ``success``). The root is included when
    any path succeeds."""
    out: set[int] = set()
    for n in range(len(tree)):
        if tree.terminated[n] and is_success(tree.reward[n], tree.info[n], success) \
                and (kind is None or tree.kind[n] == kind):
            while n != -1 and n not in out:
                out.add(n)
                n = tree.parent[n]
    return out
