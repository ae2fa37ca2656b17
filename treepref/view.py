"""``treepref view``: one self-contained HTML page that shows a run's search trees.

The page is ``view_template.html`` (the markup, CSS and JS, no network) with the run's data put in as one
JSON blob: every tree's nodes as rows of ``NODE_FIELDS``, its best path and the exported step pairs that
touch it. The page builds a tree's DOM lazily: a node's children are made only when it is expanded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from treepref.envs.base import is_success
from treepref.tree import ROOT, STEP, Tree, atomic_write_text

TEMPLATE = Path(__file__).with_name("view_template.html")
DATA_MARK = "__TREEPREF_VIEW_DATA__"
TITLE_MARK = "__TREEPREF_VIEW_TITLE__"

# One node record: a list with these fields in this order (the page reads them by name via this list).
NODE_FIELDS = ("parent", "depth", "text", "visits", "value", "reward", "prior", "terminated", "truncated",
               "kind", "samples", "scores", "mc_correct", "mc_total", "n_tokens", "logprob", "info", "obs")


class ViewError(ValueError):
    """The run folder cannot be shown (no such folder, no trees, unknown problem): one line for the user."""


SUCCESS_RULE = "path to a terminated step that succeeded (reward ≥ 1 unless the env said), the most visited such step"
GREEDY_RULE = "from the root, repeatedly the child with the highest value (Q), ties by visits"


# -- data -----------------------------------------------------------------------------------------------
def best_path(tree: Tree) -> tuple[list[int], str]:
    """Node ids of the highlighted path (root first) and the rule that chose it.

    If a successful terminated step node exists (``envs.base.is_success``: the environment's word, or reward
    ≥ 1), the path to the most visited one (ties: the first made); otherwise from the root repeatedly the step child with the highest value, unvisited children
    last, ties broken by visits and then by creation order."""
    wins = [i for i in tree.nodes(STEP) if tree.terminated[i] and is_success(tree.reward[i], tree.info[i])]
    if wins:
        end = max(wins, key=lambda i: (tree.visits[i], -i))
        return [ROOT, *tree.path(end)], SUCCESS_RULE
    path, node = [ROOT], ROOT
    while kids := tree.children(node):
        def rank(c: int):
            v = tree.value(c)
            return (v is not None, v if v is not None else 0.0, tree.visits[c], -c)

        node = max(kids, key=rank)
        path.append(node)
    return path, GREEDY_RULE


def read_pair_rows(run: Path) -> list[dict] | None:
    """The rows of ``run/exports/step_pairs/rows.jsonl`` (only the fields the page uses), or None."""
    path = run / "exports" / "step_pairs" / "rows.jsonl"
    if not path.exists():
        return None
    keep = ("problem_id", "prefix_steps", "chosen", "rejected", "chosen_value", "rejected_value")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.append({k: row.get(k) for k in keep})
    return rows


def compute_pair_rows(trees: list[Tree]) -> list[dict]:
    """Step pairs with the default ``step_pairs`` settings, for a run that has no export of them."""
    from treepref.extract import export

    ds, _ = export(trees, "step_pairs", template=lambda messages: "")
    keep = ("problem_id", "prefix_steps", "chosen", "rejected", "chosen_value", "rejected_value")
    return [{k: row.get(k) for k in keep} for row in ds]


def _completion_text(value, delimiter: str) -> str:
    """A row's ``chosen``/``rejected`` as step text: the last message's content in the conversational
    layout, without the trailing delimiter."""
    if isinstance(value, list):
        value = value[-1].get("content", "") if value else ""
    value = str(value or "")
    if delimiter and value.endswith(delimiter):
        value = value[: -len(delimiter)]
    return value


def match_pairs(tree: Tree, rows: list[dict]) -> tuple[list[dict], int]:
    """Each row of this tree as ``{"chosen": id, "rejected": id, "chosen_value", "rejected_value"}``: the
    prefix steps are followed from the root by text, then the two children matched by their text as the
    export wrote it (``Tree.rendered``; older trees: the step text without the delimiter). Returns the
    matched pairs and how many rows of this tree matched no nodes."""
    delimiter = "" if tree.has_text else tree.meta.get("delimiter", "\n\n") if isinstance(tree.meta, dict) else "\n\n"
    written = tree.rendered if tree.has_text else tree.text
    kids = tree.children_map()
    by_text: dict[tuple, list[int]] = {}

    def children_with(node: int, text: str, column: list[str]) -> list[int]:
        key = (node, text, column is written)
        if key not in by_text:
            by_text[key] = [c for c in kids[node] if column[c] == text]
        return by_text[key]

    pairs, missed = [], 0
    for row in rows:
        if row.get("problem_id") != tree.problem_id:
            continue
        parents = [ROOT]
        for step in row.get("prefix_steps") or []:
            parents = [c for p in parents for c in children_with(p, step, tree.text)]
        chosen_text = _completion_text(row.get("chosen"), delimiter)
        rejected_text = _completion_text(row.get("rejected"), delimiter)
        found = None
        for p in parents:
            chosen, rejected = children_with(p, chosen_text, written), children_with(p, rejected_text, written)
            if chosen and rejected:
                found = (chosen[0], rejected[0])
                break
        if found is None:
            missed += 1
            continue
        pairs.append({"chosen": found[0], "rejected": found[1],
                      "chosen_value": _finite(row.get("chosen_value")),
                      "rejected_value": _finite(row.get("rejected_value"))})
    return pairs, missed


def _finite(x):
    """JSON-safe: NaN and infinities become None, recursively through lists and dicts."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # chat messages
        return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                           for m in prompt)
    return str(prompt)


def opening(tree: Tree) -> str:
    """What the policy was shown first: the task's user turn (an environment's opening observation, where the
    task is stated, included) when the tree recorded its chat turns, else the problem's prompt."""
    meta = tree.meta if isinstance(tree.meta, dict) else {}
    users = [m.get("content", "") for m in meta.get("messages") or ()
             if isinstance(m, dict) and m.get("role") == "user"]
    prompt = _prompt_text(tree.prompt)
    last = str(users[-1]).strip() if users else ""
    return last if last and prompt.strip() in last else prompt  # never less than the problem's own text


def tree_data(tree: Tree, rows: list[dict] | None) -> dict:
    """One tree as the page reads it."""
    nodes = []
    for i in range(len(tree)):
        nodes.append([tree.parent[i], tree.depth[i], tree.text[i], tree.visits[i], _finite(tree.value(i)),
                      _finite(tree.reward[i]), _finite(tree.prior[i]), bool(tree.terminated[i]),
                      bool(tree.truncated[i]), tree.kind[i], tree.samples[i], _finite(tree.scores[i]),
                      tree.mc_correct[i], tree.mc_total[i], tree.n_tokens[i], _finite(tree.logprob[i]),
                      _finite(tree.info[i]), tree.obs[i] if i else ""])
    path, rule = best_path(tree)
    pairs, missed = match_pairs(tree, rows) if rows is not None else ([], 0)
    meta = tree.meta if isinstance(tree.meta, dict) else {}
    return {"id": tree.problem_id, "prompt": opening(tree), "answer": tree.answer,
            "search": meta.get("search"), "stats": _finite(meta.get("stats")),
            "nodes": nodes, "best_path": path, "best_rule": rule, "pairs": pairs, "unmatched_pairs": missed}


def page_data(run_name: str, trees: list[Tree], rows: list[dict] | None, pairs_note: str,
              selected: str | None = None) -> dict:
    return {"run": run_name, "fields": list(NODE_FIELDS), "selected": selected, "pairs_note": pairs_note,
            "trees": [tree_data(t, rows) for t in trees]}


def json_for_script(data) -> str:
    """JSON that is safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` are escaped as
    ``\\u003c`` and so on (valid JSON, so ``JSON.parse`` gives the text back), which rules out ``</script>``
    and ``<!--`` in the page source."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def build_html(data: dict) -> str:
    """The whole page: the template with the data blob (and the title) put in."""
    import html

    page = TEMPLATE.read_text(encoding="utf-8")
    title = html.escape(f"treepref view: {data.get('run', '')}")
    head, sep, tail = page.partition(DATA_MARK)
    if not sep:
        raise RuntimeError(f"{TEMPLATE} has no {DATA_MARK}")
    return head.replace(TITLE_MARK, title) + json_for_script(data) + tail


# -- entry point ----------------------------------------------------------------------------------------
def write_view(run: str | Path, output: str | Path | None = None, problem: str | None = None,
               compute_pairs: bool = True) -> Path:
    """Write the page for run folder ``run``; returns its path (default ``run/view.html``).

    Raises ``ViewError`` (no such folder, no trees, unknown problem) with a one-line message."""
    from treepref.runner import load_trees

    run = Path(run)
    if not run.is_dir():
        raise ViewError(f"{run}: no such run folder")
    try:
        trees = load_trees(run)
    except (ValueError, KeyError, OSError) as exc:  # a broken tree file
        raise ViewError(f"{run}: cannot read its trees: {exc}") from None
    if not trees:
        raise ViewError(f"{run}: no trees (expected {run / 'trees'}/*.json; run treepref generate first)")
    ids = [t.problem_id for t in trees]
    if problem is not None and problem not in ids:
        near = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise ViewError(f"--problem {problem!r}: no such problem in {run} (it has {near})")
    try:
        rows = read_pair_rows(run)
    except (OSError, ValueError) as exc:  # a half-written or hand-edited export
        raise ViewError(f"{run}: cannot read exports/step_pairs/rows.jsonl: {exc}") from None
    if rows is not None:
        note = f"Pairs from {Path('exports') / 'step_pairs' / 'rows.jsonl'}"
    elif compute_pairs:
        try:
            rows = compute_pair_rows(trees)
            note = "No step_pairs export in the run: pairs computed with the default step_pairs settings"
        except Exception as exc:  # marking pairs is a bonus; the trees still show
            rows, note = None, f"No step_pairs export, and computing pairs failed ({type(exc).__name__}: {exc})"
    else:
        note = "No step_pairs export in the run: pairs not marked"
    data = page_data(run.resolve().name, trees, rows, note, selected=problem)
    out = Path(output) if output else run / "view.html"
    atomic_write_text(out, build_html(data))
    os.chmod(out, 0o644)  # the temporary file it was written as is private
    return out


__all__ = ["NODE_FIELDS", "ViewError", "best_path", "build_html", "json_for_script", "match_pairs",
           "page_data", "tree_data", "write_view"]
