"""The search tree every engine fills and every exporter reads.

A Tree is a set of flat per-node columns indexed by node id, in the style of mctx: a node's id is its
creation order, the root is ``ROOT`` (0) and its parent is ``NO_PARENT`` (-1). Keeping columns (rather than
node objects linked by pointers) makes siblings, paths and exports plain index lookups and makes the JSON
form a direct dump of the columns.

Step text is stored without its trailing delimiter; the environment decides how steps are joined. Text is
for people and checkers; what the policy saw is ``token_ids``: the root holds the prompt's ids and every
other node the ids the policy generated for its step (delimiter included, exactly as sampled), so the prompt
of any node's children is ``prompt_ids(node)``, never a re-tokenisation of joined text.

The environment owns the context's text, and the tree records each node's share of it: ``rendered`` (the
root: the prompt; a step: its action as the policy wrote it) and ``obs`` (what the environment appended after
the action, an agent's observation), with the observation's ids in ``obs_ids``. So ``prompt_text(node)`` and
``prompt_ids(node)`` are the exact context at any node, whichever environment made the tree.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = 0
NO_PARENT = -1

# Node kinds: "step" nodes are chosen by the search; "rollout" nodes hold Monte Carlo completions that
# were sampled to value a node and are kept so extraction and later search can reuse them.
STEP = "step"
ROLLOUT = "rollout"

_COLUMNS = (
    "parent", "depth", "text", "n_tokens", "logprob", "prior", "visits", "value_sum", "reward",
    "terminated", "truncated", "kind", "samples", "scores", "mc_correct", "mc_total", "info", "token_ids",
    "rendered", "obs", "obs_ids",
)
# columns older trees lack, with the empty value they read as
_OPTIONAL = {"token_ids": list, "rendered": str, "obs": str, "obs_ids": list}


@dataclass
class Tree:
    """Per-node columns of one problem's search tree."""

    problem_id: str
    prompt: Any  # the problem's prompt: text or chat messages
    answer: str | None = None
    meta: dict = field(default_factory=dict)  # search name, settings, stats
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    logprob: list[float] = field(default_factory=list)  # sum of token log-probs of the step
    prior: list[float] = field(default_factory=list)  # P(s, a) for PUCT, set by the search
    visits: list[int] = field(default_factory=list)
    value_sum: list[float] = field(default_factory=list)
    reward: list[float | None] = field(default_factory=list)  # environment/verifier reward, if any
    terminated: list[bool] = field(default_factory=list)  # the task ended (a final answer was given)
    truncated: list[bool] = field(default_factory=list)  # a budget ran out before the task ended
    kind: list[str] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)  # how many sampled children had this same text
    scores: list[dict] = field(default_factory=list)  # evaluator name -> score (PRM, judge, step check)
    mc_correct: list[int] = field(default_factory=list)  # Monte Carlo completions that reached the answer
    mc_total: list[int] = field(default_factory=list)
    info: list[dict] = field(default_factory=list)  # free-form per-node data (finish reason, answer)
    token_ids: list[list[int]] = field(default_factory=list)  # root: the prompt; else the step as generated
    rendered: list[str] = field(default_factory=list)  # root: the prompt's text; else the action as written
    obs: list[str] = field(default_factory=list)  # text the environment appended after the action
    obs_ids: list[list[int]] = field(default_factory=list)  # its ids, tokenised once when it arrived

    def __post_init__(self) -> None:
        # Child lists are an index over the parent column (not serialised): children() stays O(degree).
        self._kids: list[list[int]] = [[] for _ in self.parent]
        for i, p in enumerate(self.parent):
            if p != NO_PARENT:
                self._kids[p].append(i)
        if not self.parent:
            self._append(NO_PARENT, 0, "", 0, 0.0, 1.0, STEP)

    # -- building -------------------------------------------------------------------------------
    def _append(self, parent: int, depth: int, text: str, n_tokens: int, logprob: float, prior: float,
                kind: str) -> int:
        self.parent.append(parent)
        self.depth.append(depth)
        self.text.append(text)
        self.n_tokens.append(n_tokens)
        self.logprob.append(logprob)
        self.prior.append(prior)
        self.visits.append(0)
        self.value_sum.append(0.0)
        self.reward.append(None)
        self.terminated.append(False)
        self.truncated.append(False)
        self.kind.append(kind)
        self.samples.append(1)
        self.scores.append({})
        self.mc_correct.append(0)
        self.mc_total.append(0)
        self.info.append({})
        self.token_ids.append([])
        self.rendered.append("")
        self.obs.append("")
        self.obs_ids.append([])
        self._kids.append([])
        if parent != NO_PARENT:
            self._kids[parent].append(len(self.parent) - 1)
        return len(self.parent) - 1

    def add(self, parent: int, text: str, *, n_tokens: int = 0, logprob: float = 0.0, prior: float = 1.0,
            reward: float | None = None, terminated: bool = False, truncated: bool = False,
            kind: str = STEP, info: dict | None = None, token_ids=(), rendered: str = "", obs: str = "",
            obs_ids=()) -> int:
        """Append a child of ``parent`` and return its id."""
        if not 0 <= parent < len(self):
            raise IndexError(f"no node {parent} in tree of {len(self)} nodes")
        node = self._append(parent, self.depth[parent] + 1, text, n_tokens, logprob, prior, kind)
        self.reward[node] = reward
        self.terminated[node] = terminated
        self.truncated[node] = truncated
        if info:
            self.info[node] = dict(info)
        self.token_ids[node] = [int(t) for t in token_ids]
        self.rendered[node] = rendered
        self.obs[node] = obs
        self.obs_ids[node] = [int(t) for t in obs_ids]
        return node

    def backup(self, node: int, value: float, discount: float = 1.0) -> None:
        """Add one visit to ``node`` and every ancestor, so a node's mean value is Q = r + γ·V of the step into
        it: r is the reward received on entering the node (a non-terminated node's ``reward``, an agent's
        intermediate reward) and V what followed. ``value`` is what followed ``node`` (for a terminated node,
        its reward: everything). Without intermediate rewards and with ``discount`` 1 this is the plain MCTS
        backup (``value`` everywhere)."""
        r = self.reward[node]
        if r is not None and not self.terminated[node]:
            value = r + discount * value
        while node != NO_PARENT:
            self.visits[node] += 1
            self.value_sum[node] += value
            node = self.parent[node]
            if node != NO_PARENT:
                r = self.reward[node]
                step_reward = r if r is not None and not self.terminated[node] else 0.0
                value = step_reward + discount * value

    # -- reading --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.parent)

    def children(self, node: int, kind: str | None = STEP) -> list[int]:
        """Child ids of ``node`` in creation order, only those of ``kind`` unless it is None."""
        return [i for i in self._kids[node] if kind is None or self.kind[i] == kind]

    def path(self, node: int) -> list[int]:
        """Node ids from the root's first child down to ``node`` (empty for the root)."""
        out = []
        while node != ROOT and node != NO_PARENT:
            out.append(node)
            node = self.parent[node]
        return out[::-1]

    def steps(self, node: int) -> list[str]:
        """Step texts from the root down to ``node``."""
        return [self.text[i] for i in self.path(node)]

    def path_ids(self, node: int) -> list[list[int]]:
        """Per step from the root down to ``node``: its ids, then the ids of the observation after it."""
        return [self.token_ids[i] + self.obs_ids[i] for i in self.path(node)]

    def prompt_ids(self, node: int) -> list[int]:
        """The token ids the policy continues at ``node``: the prompt, then :meth:`path_ids` down to it."""
        return [*self.token_ids[ROOT], *(t for step in self.path_ids(node) for t in step)]

    def prompt_text(self, node: int) -> str:
        """The same context as text, as the environment rendered it (needs a tree that recorded ``rendered``)."""
        return self.rendered[ROOT] + "".join(self.rendered[i] + self.obs[i] for i in self.path(node))

    @property
    def has_text(self) -> bool:
        """Whether the tree recorded its context's text (trees written before environments owned it did not)."""
        return bool(self.rendered and self.rendered[ROOT])

    def value(self, node: int) -> float | None:
        """Mean backed-up value, or None for a node never visited."""
        return self.value_sum[node] / self.visits[node] if self.visits[node] else None

    def mc_value(self, node: int) -> float | None:
        """Fraction of Monte Carlo completions from ``node`` that reached the answer."""
        return self.mc_correct[node] / self.mc_total[node] if self.mc_total[node] else None

    def is_leaf(self, node: int) -> bool:
        return not self.children(node)

    def is_final(self, node: int) -> bool:
        return self.terminated[node] or self.truncated[node]

    def checked(self, node: int) -> bool:
        """Whether the environment's step check, where one runs (``info["step_check"]``), had something to
        judge in this step: False for a step stating nothing it could check (prose, "so we divide by 2"),
        whose rightness nobody knows; True for a verdict either way, and wherever no step check runs."""
        return self.info[node].get("step_check", True) is not None

    def nodes(self, kind: str | None = STEP) -> list[int]:
        return [i for i in range(len(self)) if kind is None or self.kind[i] == kind]

    def children_map(self) -> dict[int, list[int]]:
        """Parent id -> child ids for every node, in one pass (for exporters walking large trees)."""
        return {i: list(kids) for i, kids in enumerate(self._kids)}

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"problem_id": self.problem_id, "prompt": self.prompt, "answer": self.answer,
                "meta": self.meta, "columns": {c: getattr(self, c) for c in _COLUMNS}}

    @classmethod
    def from_dict(cls, data: dict) -> Tree:
        cols = dict(data["columns"])
        n = len(cols.get("parent", ()))
        for name, empty in _OPTIONAL.items():
            cols.setdefault(name, [empty() for _ in range(n)])
        lengths = {len(v) for v in cols.values()}
        if len(lengths) != 1:
            raise ValueError(f"tree {data.get('problem_id')!r}: columns have different lengths {lengths}")
        missing = set(_COLUMNS) - set(cols)
        if missing:
            raise ValueError(f"tree {data.get('problem_id')!r}: missing columns {sorted(missing)}")
        return cls(problem_id=data["problem_id"], prompt=data["prompt"], answer=data.get("answer"),
                   meta=data.get("meta", {}), **{c: list(cols[c]) for c in _COLUMNS})

    def save(self, path: str | os.PathLike) -> None:
        """Write the tree as JSON atomically (a reader never sees half a file)."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tree:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_networkx(self):
        """A ``networkx.DiGraph`` with every column as a node attribute (edges parent -> child)."""
        import networkx as nx

        graph = nx.DiGraph(problem_id=self.problem_id, answer=self.answer)
        for i in range(len(self)):
            attrs = {c: getattr(self, c)[i] for c in _COLUMNS if c != "parent"}
            attrs["value"] = self.value(i)
            graph.add_node(i, **attrs)
            if self.parent[i] != NO_PARENT:
                graph.add_edge(self.parent[i], i)
        return graph


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    _atomic_write(path, text, "w", encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """The same for bytes (a pickled checkpoint)."""
    _atomic_write(path, data, "wb")


def _atomic_write(path: str | os.PathLike, data, mode: str, **open_kwargs) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
