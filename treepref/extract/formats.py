"""Row builders: one function per export format, ``build(tree, ctx) -> list[Item]``.

An ``Item`` is a row plus what deduplication and filters need (a key, the node it came from, its margin,
the two texts whose edit distance counts). Column meanings are in docs/formats.md; the conventions:

* a step is rendered as the policy wrote it (``Tree.rendered``: the stop string kept), so in the standard
  layout ``prompt + chosen`` is exactly the child's context as the environment rendered it;
* a whole response (``trajectory_pairs``, ``full_*`` of ``step_dpo``) is its steps as written with the
  observations between them (an agent's), without the last step's observation (the trainer appends EOS
  where the response ended the episode);
* ``depth`` is the depth of the compared steps (1 = first step);
* ``*_ids`` columns are the token ids the policy saw (``Tree.token_ids``), never a re-tokenisation of the
  text: ``prompt_ids`` is ``Tree.prompt_ids`` of the prefix, a step's ids are its node's ``token_ids``
  (delimiter included, as sampled), a response's ids are its steps' ids concatenated. A row has all its ids
  or none: where the tree lacks the ids of any node the row needs (trees from older runs), every id column
  of that row is empty (``[]``; one ``[]`` per response or step in the list columns), never partial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from treepref.envs.base import is_success
from treepref.extract.common import Pair, Prompter, ValueReader, best_leaf, problem_of, success_nodes
from treepref.extract.rules import visit_weight
from treepref.registry import Registry
from treepref.tree import ROOT, STEP, Tree
from treepref.verifiers.judge import SCORE_KEY as JUDGE_KEY
from treepref.verifiers.judge import passes


@dataclass
class Context:
    """Settings one export runs with (built by ``treepref.extract.export``)."""

    prompter: Prompter
    read: ValueReader
    value: str = "value"
    recipe: str = ""
    rule: str = ""
    rule_fn: Callable[[Tree, int, list[int]], list[Pair]] | None = None
    kind: str | None = STEP  # candidate children's kind; None = every kind
    weight: str | None = None  # None: weight 1.0; "visits": rules.visit_weight
    weight_k: float = 1.0
    responses: str = "paths"  # ranked_lists: "paths" (step + best continuation) or "siblings" (the step)
    success: float = 1.0  # trajectory_pairs: reward at or above which a solution is correct
    options: dict = field(default_factory=dict)


@dataclass
class Item:
    row: dict
    key: Hashable
    group: Hashable = None  # the node the row came from (max_per_node)
    margin: float | None = None
    texts: tuple[str, str] | None = None  # the two compared texts (min_edit)
    checks: dict = field(default_factory=dict)  # what the pair filters read (see ``_checks``)


def _base(tree: Tree, ctx: Context) -> dict:
    return {"problem_id": tree.problem_id, "recipe": ctx.recipe}


def _continuation_nodes(tree: Tree, node: int, kids: dict[int, list[int]]) -> list[int]:
    """Nodes from ``node`` down to the best-ending leaf under it (see ``common.best_leaf``)."""
    return tree.path(best_leaf(tree, node, kids))[tree.depth[node] - 1:]


# -- token ids ----------------------------------------------------------------------------------------
# Id columns and how deep their lists nest (1: a list of ids, 2: a list of id lists); api.export types them
# as int64 lists, so an export of trees without ids still has the same schema.
ID_COLUMNS = {"prompt_ids": 1, "chosen_ids": 1, "rejected_ids": 1, "full_chosen_ids": 1,
              "full_rejected_ids": 1, "responses_ids": 2, "completions_ids": 2, "prefix_ids": 2}


def _known(tree: Tree, nodes) -> bool:
    """Whether every one of ``nodes`` has its token ids recorded (a sampled step never has none)."""
    return all(tree.token_ids[n] for n in nodes)


def _concat(tree: Tree, nodes) -> list[int]:
    return [t for n in nodes for t in tree.token_ids[n]]


def _row_ids(tree: Tree, prefix: int, sides: dict[str, list[int]],
             lists: dict[str, list[list[int]]] | None = None) -> dict:
    """``prompt_ids`` (``tree.prompt_ids(prefix)``), each ``sides`` column (the ids of its nodes, concatenated)
    and each ``lists`` column (one such concatenation per entry), or all of them empty when any node they
    need lacks ids (so a row never holds partial, hence wrong, ids)."""
    lists = lists or {}
    needed = [ROOT, *tree.path(prefix), *(n for ns in sides.values() for n in ns),
              *(n for entries in lists.values() for ns in entries for n in ns)]
    if not _known(tree, needed):
        return {"prompt_ids": [], **{c: [] for c in sides}, **{c: [[] for _ in e] for c, e in lists.items()}}
    return {"prompt_ids": tree.prompt_ids(prefix), **{c: _concat(tree, ns) for c, ns in sides.items()},
            **{c: [_concat(tree, ns) for ns in entries] for c, entries in lists.items()}}


def _pairs(tree: Tree, ctx: Context, kids: dict[int, list[int]]) -> list[Pair]:
    out = []
    for parent in range(len(tree)):
        children = [c for c in kids[parent] if ctx.kind is None or tree.kind[c] == ctx.kind]
        if len(children) >= 2:
            # Two siblings with the same text (not merged by the search) make a pair with no signal.
            out.extend(p for p in ctx.rule_fn(tree, parent, children)
                       if tree.text[p.chosen] != tree.text[p.rejected])
    return out


def _pair_row(tree: Tree, ctx: Context, p: Pair) -> dict:
    pr = ctx.prompter
    vc, vr = tree.visits[p.chosen], tree.visits[p.rejected]
    ids = _row_ids(tree, p.parent, {"chosen_ids": [p.chosen], "rejected_ids": [p.rejected]})
    # each prefix step's ids and the observation after it (Tree.path_ids): prompt_ids is the root's prompt followed
    # by these, so a scorer with its own short prompt (train's input: question) can put the question before them
    prefix = tree.path_ids(p.parent)
    ids["prefix_ids"] = prefix if ids["prompt_ids"] else [[] for _ in prefix]
    return {**_base(tree, ctx),
            "prompt": pr.prompt(tree, p.parent),
            "chosen": pr.completion(pr.action(tree, p.chosen)),
            "rejected": pr.completion(pr.action(tree, p.rejected)),
            "question": problem_of(tree).question,
            "prefix_steps": tree.steps(p.parent),
            "chosen_value": p.chosen_value,
            "rejected_value": p.rejected_value,
            "margin": p.margin,
            "depth": tree.depth[p.parent] + 1,
            "chosen_visits": vc,
            "rejected_visits": vr,
            **_finals(tree, p.chosen, p.rejected),
            "strategy": p.strategy,
            "weight": visit_weight(vc, vr, ctx.weight_k) if ctx.weight == "visits" else 1.0,
            **ids}


def _checks(tree: Tree, ctx: Context, p: Pair, on_success: set[int]) -> dict:
    """What the pair filters (``stats.apply_filters``) read: whether the parent lies on a successful path
    (``common.success_nodes``), the export's value of every node on the parent's path (root excluded), and
    the visits of each side that is not final (a final side's value is exact, whatever its visits),
    whether the rejected side is final, and judged (:func:`_judged`), and whether the environment's step
    check judged every prefix step and the chosen step (``Tree.checked``)."""
    path = tree.path(p.parent)
    return {"on_success_path": p.parent in on_success,
            "prefix_values": [_float(ctx.read(tree, n)) for n in path],
            "side_visits": [tree.visits[n] for n in (p.chosen, p.rejected) if not tree.is_final(n)],
            "rejected_final": tree.is_final(p.rejected),
            "rejected_judged": _judged(tree, p.rejected),
            "steps_checked": all(tree.checked(n) for n in (*path, p.chosen))}


def _judged(tree: Tree, node: int) -> bool:
    """Whether the environment ended ``node`` on a verdict about what it states: an answer it read (the
    reasoning environment's ``info["answer"]``; an environment that records none is taken at its word), or
    a step its step check found false. Not a stop without an answer, and not a cut by a depth or token
    limit: those teach the form of an ending, not which step is wrong."""
    info = tree.info[node]
    if info.get("step_check") is False:
        return True
    return bool(tree.terminated[node]) and info.get("answer", True) is not None


def _pair_item(tree: Tree, ctx: Context, p: Pair, row: dict, on_success: set[int]) -> Item:
    a, b = tree.text[p.chosen], tree.text[p.rejected]
    key = (tree.problem_id, tuple(tree.steps(p.parent)), frozenset((a, b)))
    return Item(row, key, (tree.problem_id, p.parent), p.margin, (a, b), _checks(tree, ctx, p, on_success))


def step_pairs(tree: Tree, ctx: Context) -> list[Item]:
    """TRL preference rows, one per sibling pair."""
    kids, ok = tree.children_map(), success_nodes(tree, ctx.success)
    return [_pair_item(tree, ctx, p, _pair_row(tree, ctx, p), ok) for p in _pairs(tree, ctx, kids)]


def step_apo(tree: Tree, ctx: Context) -> list[Item]:
    """step_pairs plus the MCTS Q (``Tree.value``, the backed-up mean) of both steps."""
    out, ok = [], success_nodes(tree, ctx.success)
    for p in _pairs(tree, ctx, tree.children_map()):
        row = _pair_row(tree, ctx, p)
        row["q_chosen"], row["q_rejected"] = tree.value(p.chosen), tree.value(p.rejected)
        out.append(_pair_item(tree, ctx, p, row, ok))
    return out


def step_dpo(tree: Tree, ctx: Context) -> list[Item]:
    """Step-DPO rows: the question, the prefix as text, the two steps and each one's best continuation."""
    kids, pr = tree.children_map(), ctx.prompter
    out, ok = [], success_nodes(tree, ctx.success)
    for p in _pairs(tree, ctx, kids):
        full_c, full_r = _continuation_nodes(tree, p.chosen, kids), _continuation_nodes(tree, p.rejected, kids)
        row = {**_base(tree, ctx),
               "prompt": problem_of(tree).question,
               "initial_reason_steps": pr.transcript(tree, tree.path(p.parent)),
               "chosen": pr.action(tree, p.chosen),
               "rejected": pr.action(tree, p.rejected),
               "full_chosen": pr.transcript(tree, full_c, last_obs=False),
               "full_rejected": pr.transcript(tree, full_r, last_obs=False),
               "answer": tree.answer or "",
               "chosen_value": p.chosen_value,
               "rejected_value": p.rejected_value,
               "margin": p.margin,
               "depth": tree.depth[p.parent] + 1,
               **_finals(tree, p.chosen, p.rejected),
               "full_chosen_final": bool(tree.terminated[full_c[-1]]),
               "full_rejected_final": bool(tree.terminated[full_r[-1]]),
               "strategy": p.strategy,
               # prompt_ids: the chat-templated question and the prefix steps, as the policy saw them
               **_row_ids(tree, p.parent, {"chosen_ids": [p.chosen], "rejected_ids": [p.rejected],
                                           "full_chosen_ids": full_c, "full_rejected_ids": full_r})}
        out.append(_pair_item(tree, ctx, p, row, ok))
    return out


def ranked_lists(tree: Tree, ctx: Context) -> list[Item]:
    """TPO rows: every valued child of a prefix (≥ 2), best first, with a value for each step."""
    kids = tree.children_map()
    out = []
    for parent in range(len(tree)):
        valued = [(c, ctx.read(tree, c)) for c in kids[parent] if ctx.kind is None or tree.kind[c] == ctx.kind]
        valued = sorted([(c, float(v)) for c, v in valued if v is not None], key=lambda cv: -cv[1])
        if len(valued) < 2:
            continue
        responses, step_rewards, paths = [], [], []
        for c, _ in valued:
            path = [c] if ctx.responses == "siblings" else _continuation_nodes(tree, c, kids)
            paths.append(path)
            responses.append([tree.text[n] for n in path])
            step_rewards.append([_float(ctx.read(tree, n)) for n in path])
        scores = [v for _, v in valued]
        row = {**_base(tree, ctx),
               "prompt": ctx.prompter.prompt(tree, parent),
               "responses": responses,
               "scores": scores,
               "step_rewards": step_rewards,
               "question": problem_of(tree).question,
               "prefix_steps": tree.steps(parent),
               "depth": tree.depth[parent] + 1,
               "responses_final": [bool(tree.terminated[path[-1]]) for path in paths],
               "strategy": f"ranked_{ctx.responses}",
               **_row_ids(tree, parent, {}, {"responses_ids": paths})}
        key = (tree.problem_id, tuple(tree.steps(parent)))
        out.append(Item(row, key, (tree.problem_id, parent), scores[0] - scores[-1]))
    return out


def refine_pairs(tree: Tree, ctx: Context) -> list[Item]:
    """SPaR rows: a refinement that passes (chosen) against the original response its chain of refinements
    started from (rejected).

    Contract with refinement searches: a response is one node whose ``text`` is the whole response; a
    refinement is a node whose ``info`` holds ``{"refines": <id of the node it refines>, "critique": <the
    critique that led to it>}``. Following ``refines`` back leads to the original (a node that refines
    nothing). As in SPaR, only a refinement whose value (the export's ``value``; the judge's share of
    "yes" after ``search/refine.py``) is above 0.5 makes a pair, against that original, so a pair never
    prefers a refinement that is still judged wrong. The prompt is the state at the original's parent (the
    question, for responses that are children of the root).
    """
    out = []
    for n in range(len(tree)):
        info = tree.info[n]
        if "refines" not in info:
            continue
        vc = _float(ctx.read(tree, n))
        if not passes(vc):
            continue
        orig, seen = n, {n}
        while "refines" in tree.info[orig]:
            orig = int(tree.info[orig]["refines"])
            if not 0 <= orig < len(tree) or orig in seen:
                raise ValueError(f"tree {tree.problem_id!r}: node {n}'s chain of refinements reaches a missing "
                                 f"or repeated node {orig}")
            seen.add(orig)
        if tree.text[n] == tree.text[orig]:
            continue  # a refinement that changed nothing
        vr = _float(ctx.read(tree, orig))
        margin = vc - vr if vr is not None else None
        row = {**_base(tree, ctx),
               "prompt": ctx.prompter.prompt(tree, tree.parent[orig]),
               "chosen": ctx.prompter.completion(tree.text[n]),
               "rejected": ctx.prompter.completion(tree.text[orig]),
               "critique": str(info.get("critique", "")),
               "question": problem_of(tree).question,
               "chosen_value": vc,
               "rejected_value": vr,
               "margin": margin,
               "refinements": len(seen) - 1,
               "strategy": "refines"}
        key = (tree.problem_id, tree.parent[orig], tree.text[n], tree.text[orig])
        out.append(Item(row, key, (tree.problem_id, orig), margin, (tree.text[n], tree.text[orig])))
    return out


def _judge_value(tree: Tree, node: int) -> float | None:
    return _float(tree.scores[node].get(JUDGE_KEY))


def refine_sft(tree: Tree, ctx: Context) -> list[Item]:
    """SPaR refiner SFT rows: the refiner prompt as sent and a refinement that raised the judge's value.

    The prompt is ``info["refine_prompt"]``; a refinement is kept only where its judge value
    (``scores["judge"]``) is above that of the node it refines (both judged), so the refiner learns only
    from refinements that helped. ``passed``: the refinement's judge value is above 0.5 (a majority of yes).
    """
    out = []
    for n in range(len(tree)):
        info = tree.info[n]
        if "refines" not in info or "refine_prompt" not in info:
            continue
        orig = int(info["refines"])
        if not 0 <= orig < len(tree) or orig == n:
            raise ValueError(f"tree {tree.problem_id!r}: node {n} refines missing node {orig}")
        v, v_orig = _judge_value(tree, n), _judge_value(tree, orig)
        if v is None or v_orig is None or v <= v_orig:
            continue
        completion = tree.rendered[n] if tree.has_text else tree.text[n]
        row = {**_base(tree, ctx),
               "prompt": str(info["refine_prompt"]),
               "completion": completion,
               "critique": str(info.get("critique") or ""),
               "passed": passes(v),
               "question": problem_of(tree).question,
               "value": v,
               "refined_value": v_orig,
               "level": info.get("level"),
               "strategy": "refine_sft"}
        key = (tree.problem_id, row["prompt"], completion)
        out.append(Item(row, key, (tree.problem_id, orig), v - v_orig))
    return out


def judge_pairs(tree: Tree, ctx: Context) -> list[Item]:
    """SPaR judge pairs: a critique that agrees with the majority verdict against one that does not.

    One row per judged node with a strict majority and a dissent: the first agreeing critique (chosen) and
    the first disagreeing one (rejected), in sampling order, on the judge prompt as sent
    (``info["judge_prompt"]``). A tie has no majority and no row; unparsed critiques are never used.
    ``response_success``: the environment's word on the judged response (None where it has none), to
    measure how often the majority is right.
    """
    out = []
    for n in range(1, len(tree)):
        info = tree.info[n]
        critiques = [c for c in info.get("critiques", ()) if c.get("verdict") is not None]
        if "judge_prompt" not in info or not critiques:
            continue
        yes = [c["text"] for c in critiques if c["verdict"]]
        no = [c["text"] for c in critiques if not c["verdict"]]
        if not yes or not no or len(yes) == len(no):
            continue
        majority = len(yes) > len(no)
        chosen, rejected = (yes[0], no[0]) if majority else (no[0], yes[0])
        margin = abs(len(yes) - len(no)) / len(critiques)
        row = {**_base(tree, ctx),
               "prompt": str(info["judge_prompt"]),
               "chosen": chosen,
               "rejected": rejected,
               "question": problem_of(tree).question,
               "response": tree.text[n],
               "majority": "yes" if majority else "no",
               "yes": len(yes),
               "no": len(no),
               "margin": margin,
               "response_success": info.get("success"),
               "strategy": "judge_majority"}
        key = (tree.problem_id, row["prompt"], chosen, rejected)
        out.append(Item(row, key, (tree.problem_id, n), margin, (chosen, rejected)))
    return out


def trajectory_pairs(tree: Tree, ctx: Context) -> list[Item]:
    """Outcome-level rows: every correct complete solution against every incorrect one of the problem.

    A complete solution is a terminated node of any kind (rollouts included) with a reward; correct means
    the environment called it a success (``envs.base.is_success``: its word, or reward ≥ ``success``). Solutions with the same text count once (the first found).
    """
    seen: dict[str, int] = {}
    for n in range(1, len(tree)):
        if tree.terminated[n] and tree.reward[n] is not None:
            seen.setdefault(ctx.prompter.response(tree, tree.path(n)), n)
    won = {n: is_success(tree.reward[n], tree.info[n], ctx.success) for n in seen.values()}
    good = [(t, n) for t, n in seen.items() if won[n]]
    bad = [(t, n) for t, n in seen.items() if not won[n]]
    out = []
    for (ta, a), (tb, b) in ((g, x) for g in good for x in bad):
        ra, rb = float(tree.reward[a]), float(tree.reward[b])
        row = {**_base(tree, ctx),
               "prompt": ctx.prompter.question_prompt(tree),
               "chosen": ctx.prompter.completion(ta),
               "rejected": ctx.prompter.completion(tb),
               "question": problem_of(tree).question,
               "chosen_reward": ra,
               "rejected_reward": rb,
               "margin": ra - rb,
               "chosen_steps": tree.steps(a),
               "rejected_steps": tree.steps(b),
               **_finals(tree, a, b),
               "strategy": "outcome",
               **_row_ids(tree, ROOT, {"chosen_ids": tree.path(a), "rejected_ids": tree.path(b)}),
               "prefix_ids": []}  # a pair at the root: no prefix steps before the question (train's input: question)
        out.append(Item(row, (tree.problem_id, ta, tb), (tree.problem_id, ROOT), ra - rb, (ta, tb)))
    return out


def trees(tree: Tree, ctx: Context) -> list[Item]:
    """One nested record per problem: every node inline (with its children's ids), and tree statistics.

    Nodes are a flat list rather than nested ``children`` records because Arrow needs one fixed schema,
    which recursion of arbitrary depth does not have. ``scores`` and ``info`` are JSON strings, since
    their keys differ between nodes and searches.
    """
    kids = tree.children_map()
    nodes = [{"id": i, "parent": tree.parent[i], "depth": tree.depth[i], "kind": tree.kind[i],
              "text": tree.text[i], "n_tokens": tree.n_tokens[i], "logprob": float(tree.logprob[i]),
              "prior": float(tree.prior[i]), "visits": tree.visits[i], "value": tree.value(i),
              "reward": _float(tree.reward[i]), "terminated": bool(tree.terminated[i]),
              "truncated": bool(tree.truncated[i]), "samples": tree.samples[i],
              "scores": json.dumps(tree.scores[i], sort_keys=True),
              "mc": {"correct": tree.mc_correct[i], "total": tree.mc_total[i]},
              "info": json.dumps(tree.info[i], sort_keys=True, default=str),
              "children": kids[i]} for i in range(len(tree))]
    solved = any(tree.terminated[i] and (tree.reward[i] or 0) >= ctx.success for i in range(len(tree)))
    stats = {"nodes": len(tree), "step_nodes": len(tree.nodes(STEP)),
             "rollout_nodes": len(tree) - len(tree.nodes(STEP)), "max_depth": max(tree.depth),
             "generated_tokens": sum(tree.n_tokens), "terminated": sum(map(bool, tree.terminated)),
             "solved": solved}
    row = {**_base(tree, ctx), "prompt": problem_of(tree).messages(None), "answer": tree.answer or "",
           "meta": json.dumps(tree.meta, sort_keys=True, default=str), "nodes": nodes, "stats": stats}
    # Only an exact copy of a tree is a duplicate (two searches of one problem are two records).
    return [Item(row, (tree.problem_id, json.dumps(tree.to_dict(), sort_keys=True, default=str)), None)]


def stepwise(tree: Tree, ctx: Context) -> list[Item]:
    """TRL stepwise-supervision rows, built by ``treepref.extract.stepwise.stepwise_rows``."""
    from treepref.extract.stepwise import stepwise_rows

    if ctx.value in ("value", "reward"):
        raise ValueError("stepwise labels come from 'mc' or a scores key, not value=" + repr(ctx.value))
    source = ctx.value[len("scores."):] if ctx.value.startswith("scores.") else ctx.value
    out = []
    for r in stepwise_rows(tree, source=source, **ctx.options):
        row = {**r, **_base(tree, ctx)}
        key = (row["problem_id"], json.dumps(row.get("prompt"), default=str),
               tuple(map(str, row.get("completions", ()))))
        out.append(Item(row, key))
    return out


def _finals(tree: Tree, chosen: int, rejected: int) -> dict:
    """Whether each side ends its solution (terminated: it states an answer, or the policy stopped). A
    trainer appends EOS after exactly these sides; a step in mid-solution gets none."""
    return {"chosen_final": bool(tree.terminated[chosen]), "rejected_final": bool(tree.terminated[rejected])}


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class Format:
    """An export format: its builder, columns, default rule (None: takes no rule), filters, layouts."""

    build: Callable[[Tree, Context], list[Item]]
    columns: tuple[str, ...]
    default_rule: str | None = None
    filters: tuple[str, ...] = ()
    layouts: tuple[str, ...] = ("standard", "conversational")
    default_value: str = "value"


_PAIR_FILTERS = ("min_margin", "min_edit", "max_per_node", "max_per_problem")
# Sibling-pair formats also filter on the prefix and the evidence behind each side (stats.apply_filters).
_STEP_PAIR_FILTERS = ("prefix", "prefix_value", "min_visits", "exact_rejected", "checked_steps") + _PAIR_FILTERS
_ID = ("problem_id", "recipe")
_PAIR_IDS = ("prompt_ids", "chosen_ids", "rejected_ids")
_PAIR_COLUMNS = _ID + ("prompt", "chosen", "rejected", "question", "prefix_steps", "chosen_value",
                       "rejected_value", "margin", "depth", "chosen_visits", "rejected_visits",
                       "chosen_final", "rejected_final", "strategy", "weight") + _PAIR_IDS + ("prefix_ids",)

FORMATS = Registry("format", {
    "step_pairs": Format(step_pairs, _PAIR_COLUMNS, "max_min", _STEP_PAIR_FILTERS),
    "step_dpo": Format(step_dpo, _ID + ("prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen",
                                        "full_rejected", "answer", "chosen_value", "rejected_value", "margin",
                                        "depth", "chosen_final", "rejected_final", "full_chosen_final",
                                        "full_rejected_final", "strategy")
                       + _PAIR_IDS + ("full_chosen_ids", "full_rejected_ids"),
                       "max_min", _STEP_PAIR_FILTERS, ("standard",)),
    "step_apo": Format(step_apo, _PAIR_COLUMNS + ("q_chosen", "q_rejected"), "q_sign", _STEP_PAIR_FILTERS),
    "ranked_lists": Format(ranked_lists, _ID + ("prompt", "responses", "scores", "step_rewards", "question",
                                                "prefix_steps", "depth", "responses_final", "strategy",
                                                "prompt_ids", "responses_ids"),
                           None, ("min_margin", "max_per_problem")),
    "stepwise": Format(stepwise, ("prompt", "completions", "labels", "soft_labels", "prompt_ids",
                                  "completions_ids") + _ID,
                       None, ("max_per_problem",), ("standard",), default_value="mc"),
    "refine_pairs": Format(refine_pairs, _ID + ("prompt", "chosen", "rejected", "critique", "question",
                                                "chosen_value", "rejected_value", "margin", "refinements",
                                                "strategy"),
                           None, _PAIR_FILTERS),
    "refine_sft": Format(refine_sft, _ID + ("prompt", "completion", "critique", "passed", "question", "value",
                                            "refined_value", "level", "strategy"),
                         None, ("min_margin", "max_per_node", "max_per_problem"), ("standard",)),
    "judge_pairs": Format(judge_pairs, _ID + ("prompt", "chosen", "rejected", "question", "response", "majority",
                                              "yes", "no", "margin", "response_success", "strategy"),
                          None, ("min_margin", "max_per_problem"), ("standard",)),
    "trees": Format(trees, _ID + ("prompt", "answer", "meta", "nodes", "stats"), None, (), ("standard",)),
    "trajectory_pairs": Format(trajectory_pairs, _ID + ("prompt", "chosen", "rejected", "question",
                                                        "chosen_reward", "rejected_reward", "margin",
                                                        "chosen_steps", "rejected_steps", "chosen_final",
                                                        "rejected_final", "strategy")
                               + _PAIR_IDS + ("prefix_ids",),
                               None, ("min_margin", "min_edit", "max_per_problem")),
})
