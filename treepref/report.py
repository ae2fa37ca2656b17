"""``treepref report``: an HTML page of plots about one run folder.

The page (``index.html``) embeds every plot as a base64 PNG, so it can be mailed or opened anywhere; the
same PNGs are written next to it, and ``report.json`` holds the numbers behind each plot. Plots are drawn
with matplotlib's Agg canvas directly (no pyplot, no display, no global backend switch).

What is shown, and where it comes from:

* summary: problems, nodes, generated tokens and pairs from the trees and the step_pairs export;
  good share from the export's ``label_quality`` (written by ``treepref extract`` on checkable domains);
  wall time and prefix-cache hit rate from ``summary.json`` when it records them;
* pairs (``exports/step_pairs/rows.jsonl``): chosen vs rejected values, pairs per depth, margins, and
  generated tokens per pair (a problem's tree tokens / its pairs);
* label quality: the export's buckets over all pairs;
* trees: branching factor (mean step children of the nodes that have any) and depth (deepest step node),
  generated tokens and wall time per problem (``tree.meta``);
* failures: the lines of ``errors.jsonl`` and ``problem_errors.jsonl``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import Counter
from pathlib import Path

from treepref.extract.quality import BUCKETS as QUALITY_BUCKETS  # every pair is in exactly one of them
from treepref.tree import STEP, Tree, atomic_write_text

PAIRS = Path("exports") / "step_pairs"
PLOTS = ("values", "pairs_per_depth", "margins", "tokens_per_pair", "label_quality", "tree_shape",
         "generated_tokens", "wall_time")
NOT_RECORDED = "not recorded"


class ReportError(ValueError):
    """The run folder cannot be reported on (no such folder, no trees, an unreadable file): one line."""


# -- reading --------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read it: {exc}") from None
    return data if isinstance(data, dict) else None


def _read_jsonl(path: Path) -> list[dict] | None:
    """The objects of a JSONL file, None if it does not exist; a line that is not a JSON object is kept as
    ``{"line": text}`` (an error log should still show when one of its lines is broken)."""
    if not path.exists():
        return None
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                rows.append(row if isinstance(row, dict) else {"line": line.strip()})
    except OSError as exc:
        raise ReportError(f"{path}: cannot read it: {exc}") from None
    return rows


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


# -- numbers --------------------------------------------------------------------------------------------
def tree_tokens(tree: Tree) -> int:
    """Tokens generated for one problem: the runner's count, else the sum over the tree's nodes."""
    return int(tree.meta.get("generated_tokens", sum(tree.n_tokens)))


def tree_shape(tree: Tree) -> dict:
    """Branching factor (mean step children over the nodes that have any step child) and depth (the deepest
    step node) of one tree."""
    fanout = []  # step children of each node that has any
    for node in tree.nodes(STEP):
        n = len(tree.children(node, STEP))
        if n:
            fanout.append(n)
    depth = max((tree.depth[i] for i in tree.nodes(STEP)), default=0)
    return {"branching_factor": sum(fanout) / len(fanout) if fanout else 0.0, "expanded_nodes": len(fanout),
            "depth": depth, "nodes": len(tree)}


def pair_numbers(rows: list[dict], tokens: dict[str, int], stats: dict | None) -> dict:
    """The numbers behind the pair plots, from the export's rows and each problem's generated tokens."""
    chosen = [v for v in (_number(r.get("chosen_value")) for r in rows) if v is not None]
    rejected = [v for v in (_number(r.get("rejected_value")) for r in rows) if v is not None]
    margins = []
    for r in rows:
        m = _number(r.get("margin"))
        if m is None:
            c, j = _number(r.get("chosen_value")), _number(r.get("rejected_value"))
            m = None if c is None or j is None else c - j
        if m is not None:
            margins.append(m)
    depths = Counter(int(r["depth"]) for r in rows if _number(r.get("depth")) is not None)
    per_problem = Counter(r.get("problem_id") for r in rows)
    per_pair = {pid: tokens[pid] / n for pid, n in sorted(per_problem.items()) if pid in tokens}
    overall = (stats or {}).get("generated_tokens_per_row")
    if overall is None and rows:
        overall = sum(tokens.values()) / len(rows)
    return {
        "pairs": len(rows),
        "values": {"chosen": chosen, "rejected": rejected},
        "pairs_per_depth": {str(d): depths[d] for d in sorted(depths)},
        "margins": {"values": margins, "mean": sum(margins) / len(margins) if margins else None},
        "tokens_per_pair": {"overall": overall, "per_problem": per_pair,
                            "problems_without_pairs": sum(1 for pid in tokens if pid not in per_problem)},
    }


def label_quality(stats: dict | None) -> dict | None:
    """The export's label-quality bucket counts, or None when it has none (no checker for the domain)."""
    quality = (stats or {}).get("label_quality")
    if not isinstance(quality, dict):
        return None
    counts = {b: int(quality.get(b, 0)) for b in QUALITY_BUCKETS}
    pairs = int(quality.get("pairs", sum(counts.values())))
    good_share = quality.get("good_share", counts["good"] / pairs if pairs else None)
    return {"pairs": pairs, "counts": counts, "good_share": good_share}


def prefix_cache_hit_rate(summary: dict | None, trees: list[Tree]):
    """The hit rate if ``summary.json`` or the trees' meta record one; otherwise ``NOT_RECORDED``."""
    if summary and _number(summary.get("prefix_cache_hit_rate")) is not None:
        return summary["prefix_cache_hit_rate"]
    rates = [t.meta.get("prefix_cache_hit_rate") for t in trees]
    rates = [r for r in rates if _number(r) is not None]
    return sum(rates) / len(rates) if rates else NOT_RECORDED


def collect(run: Path, trees: list[Tree]) -> dict:
    """Everything the page shows, as plain JSON-able numbers (this is ``report.json``)."""
    summary = _read_json(run / "summary.json")
    stats = _read_json(run / PAIRS / "stats.json")
    rows = _read_jsonl(run / PAIRS / "rows.jsonl")
    tokens = {t.problem_id: tree_tokens(t) for t in trees}
    shapes = {t.problem_id: tree_shape(t) for t in trees}
    walls = {t.problem_id: t.meta["wall_time_s"] for t in trees if _number(t.meta.get("wall_time_s")) is not None}
    quality = label_quality(stats)
    pairs = pair_numbers(rows, tokens, stats) if rows is not None else None
    wall = summary.get("wall_time_s") if summary else None
    return {
        "run": str(run),
        "summary": {
            "problems": len(trees),
            "nodes": sum(len(t) for t in trees),
            "generated_tokens": sum(tokens.values()),
            "pairs": pairs["pairs"] if pairs else None,
            "good_share": quality["good_share"] if quality else None,
            "wall_time_s": wall if _number(wall) is not None else NOT_RECORDED,
            "prefix_cache_hit_rate": prefix_cache_hit_rate(summary, trees),
        },
        "export": {"path": str(PAIRS / "rows.jsonl"), "present": rows is not None},
        "pairs": pairs,
        "label_quality": quality,
        "trees": {"shape": shapes, "generated_tokens": tokens, "wall_time_s": walls or None},
        "failures": {"errors": _read_jsonl(run / "errors.jsonl") or [],
                     "problem_errors": _read_jsonl(run / "problem_errors.jsonl") or []},
    }


# -- plots: each returns a matplotlib Figure, or None when there is nothing to draw -------------------
def _figure(width: float = 5.0, height: float = 3.2, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols)
    for ax in axes if cols > 1 else [axes]:
        ax.yaxis.get_major_locator().set_params(integer=True)  # every y axis here counts pairs or trees
    return fig, axes


def _bins(values: list[float], n: int = 20):
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _integer_bars(ax, xs: list[int]) -> None:
    """One tick per bar, and room around a lone bar (matplotlib would stretch it over the whole axis)."""
    ax.set_xticks(xs)
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)


def plot_values(data: dict):
    pairs = data["pairs"]
    if not pairs or not (pairs["values"]["chosen"] or pairs["values"]["rejected"]):
        return None
    chosen, rejected = pairs["values"]["chosen"], pairs["values"]["rejected"]
    fig, ax = _figure()
    bins = _bins(chosen + rejected)
    ax.hist(chosen, bins=bins, alpha=0.6, label=f"chosen ({len(chosen)})", color="tab:green")
    ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected ({len(rejected)})", color="tab:red")
    ax.set(xlabel="step value", ylabel="pairs", title="Values of chosen and rejected steps")
    ax.legend()
    return fig


def plot_pairs_per_depth(data: dict):
    pairs = data["pairs"]
    if not pairs or not pairs["pairs_per_depth"]:
        return None
    fig, ax = _figure()
    depths = pairs["pairs_per_depth"]
    ax.bar([int(d) for d in depths], list(depths.values()), width=0.6, color="tab:blue")
    ax.set(xlabel="depth of the pair's steps", ylabel="pairs", title="Pairs per depth")
    _integer_bars(ax, [int(d) for d in depths])
    return fig


def plot_margins(data: dict):
    pairs = data["pairs"]
    if not pairs or not pairs["margins"]["values"]:
        return None
    fig, ax = _figure()
    margins = pairs["margins"]["values"]
    ax.hist(margins, bins=_bins(margins), color="tab:purple")
    ax.set(xlabel="margin (chosen value - rejected value)", ylabel="pairs",
           title=f"Margins (mean {pairs['margins']['mean']:.3g})")
    return fig


def plot_tokens_per_pair(data: dict):
    pairs = data["pairs"]
    if not pairs or not pairs["tokens_per_pair"]["per_problem"]:
        return None
    tpp = pairs["tokens_per_pair"]
    per = list(tpp["per_problem"].values())
    fig, ax = _figure()
    overall = [tpp["overall"]] if _number(tpp["overall"]) is not None else []
    ax.hist(per, bins=_bins(per + overall), color="tab:orange", label="problems with pairs")
    if overall:
        ax.axvline(tpp["overall"], color="black", linestyle="--",
                   label=f"whole run, all tokens / all pairs: {tpp['overall']:.4g}")
    ax.set(xlabel="generated tokens / pair (per problem)", ylabel="problems", title="Generated tokens per pair")
    ax.legend()
    return fig


def plot_label_quality(data: dict):
    quality = data["label_quality"]
    if not quality:
        return None
    fig, ax = _figure(6.0, 3.4)
    names, counts = list(quality["counts"]), list(quality["counts"].values())
    colors = ["tab:green" if n == "good" else "tab:red" if n in ("inverted", "bad_prefix") else "tab:gray"
              for n in names]
    ax.bar(range(len(names)), counts, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel="pairs", title=f"Label quality of all {quality['pairs']} pairs")
    return fig


def plot_tree_shape(data: dict):
    shapes = list(data["trees"]["shape"].values())
    if not shapes:
        return None
    fig, (left, right) = _figure(8.0, 3.2, cols=2)
    branching = [s["branching_factor"] for s in shapes]
    left.hist(branching, bins=_bins(branching, 15), color="tab:cyan")
    left.set(xlabel="mean children of expanded nodes", ylabel="trees", title="Branching factor")
    depths = Counter(s["depth"] for s in shapes)
    right.bar(sorted(depths), [depths[d] for d in sorted(depths)], width=0.6, color="tab:olive")
    _integer_bars(right, sorted(depths))
    right.set(xlabel="deepest step", ylabel="trees", title="Tree depth")
    return fig


def plot_generated_tokens(data: dict):
    tokens = list(data["trees"]["generated_tokens"].values())
    if not tokens:
        return None
    fig, ax = _figure()
    ax.hist(tokens, bins=_bins([float(t) for t in tokens]), color="tab:brown")
    ax.set(xlabel="generated tokens", ylabel="problems", title="Generated tokens per problem")
    return fig


def plot_wall_time(data: dict):
    walls = data["trees"]["wall_time_s"]
    if not walls:
        return None
    fig, ax = _figure()
    values = [float(w) for w in walls.values()]
    ax.hist(values, bins=_bins(values), color="tab:pink")
    ax.set(xlabel="seconds", ylabel="problems", title="Search wall time per problem")
    return fig


PLOT_FUNCTIONS = {"values": plot_values, "pairs_per_depth": plot_pairs_per_depth, "margins": plot_margins,
                  "tokens_per_pair": plot_tokens_per_pair, "label_quality": plot_label_quality,
                  "tree_shape": plot_tree_shape, "generated_tokens": plot_generated_tokens,
                  "wall_time": plot_wall_time}


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- page -----------------------------------------------------------------------------------------------
SECTIONS = (  # (heading, plots, note when a plot is absent)
    ("Step pairs", ("values", "pairs_per_depth", "margins", "tokens_per_pair"), "no pairs to plot"),
    ("Label quality", ("label_quality",), "not recorded: the export's stats.json has no label_quality "
                                          "(no checker for this domain)"),
    ("Trees", ("tree_shape", "generated_tokens", "wall_time"), "not recorded in the trees"),
)

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.3em}.note{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:.5em}"""


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r if k != "traceback"))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def build_html(data: dict, images: dict[str, bytes]) -> str:
    s = data["summary"]
    summary = [("problems", s["problems"]), ("nodes", s["nodes"]), ("generated tokens", s["generated_tokens"]),
               ("pairs", s["pairs"] if s["pairs"] is not None else "export missing"),
               ("good share", f"{s['good_share']:.1%}" if s["good_share"] is not None else NOT_RECORDED),
               ("wall time (s)", s["wall_time_s"]), ("prefix-cache hit rate", s["prefix_cache_hit_rate"])]
    parts = [f"<h1>treepref report: {html.escape(data['run'])}</h1>", "<table>"]
    parts += [f"<tr><th>{k}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary]
    parts.append("</table>")
    for heading, names, note in SECTIONS:
        parts.append(f"<h2>{heading}</h2>")
        if heading == "Step pairs" and not data["export"]["present"]:
            parts.append(f'<p class="note">Export missing: no {html.escape(data["export"]["path"])} in the run '
                         f"(run <code>treepref extract RUN -f step_pairs</code>).</p>")
            continue
        shown = [n for n in names if n in images]
        if shown:
            parts.append('<div class="plots">' + "".join(
                f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(images[n]).decode()}">'
                for n in shown) + "</div>")
        for n in names:
            if n not in images:
                parts.append(f'<p class="note">{n.replace("_", " ")}: {note}</p>')
    parts.append("<h2>Failures</h2>")
    for key, file in (("errors", "errors.jsonl"), ("problem_errors", "problem_errors.jsonl")):
        rows = data["failures"][key]
        parts.append(f"<h3>{file} ({len(rows)})</h3>")
        parts.append(_table(rows) if rows else '<p class="note">none</p>')
    body = "\n".join(parts)
    title = html.escape(f"treepref report: {data['run']}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


# -- entry point ----------------------------------------------------------------------------------------
def write_report(run: str | Path, output: str | Path | None = None) -> Path:
    """Write ``index.html``, the PNGs and ``report.json`` into ``output`` (default ``run/report``); returns
    the page's path. Raises ``ReportError`` with a one-line message."""
    from treepref.runner import load_trees

    run = Path(run)
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder")
    try:
        trees = load_trees(run)
    except (ValueError, KeyError, OSError) as exc:
        raise ReportError(f"{run}: cannot read its trees: {exc}") from None
    if not trees:
        raise ReportError(f"{run}: no trees (expected {run / 'trees'}/*.json; run treepref generate first)")
    data = collect(run, trees)
    images = {}
    for name, plot in PLOT_FUNCTIONS.items():
        fig = plot(data)
        if fig is not None:
            images[name] = png_bytes(fig)
    out = Path(output) if output else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # a plot of an earlier report that this one has not drawn would mislead
        path = out / f"{name}.png"
        if name in images:
            path.write_bytes(images[name])
        elif path.exists():
            path.unlink()
    data["images"] = {name: f"{name}.png" for name in images}
    atomic_write_text(out / "report.json", json.dumps(data, indent=2, ensure_ascii=False, default=str))
    page = out / "index.html"
    atomic_write_text(page, build_html(data, images))
    for path in (out / "report.json", page):
        os.chmod(path, 0o644)  # atomic_write_text's temporary file is private
    return page


__all__ = ["PLOT_FUNCTIONS", "QUALITY_BUCKETS", "ReportError", "build_html", "collect", "label_quality",
           "pair_numbers", "tree_shape", "tree_tokens", "write_report"]
