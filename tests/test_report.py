"""``treepref report``: the numbers behind the plots on the example tree, the images and the page, a run
without a step_pairs export, and the CLI's one-line errors."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from treepref.cli import main
from treepref.extract import write_export
from treepref.extract.examples import example_tree
from treepref.runner import tree_path

PAIR_PLOTS = ("values", "pairs_per_depth", "margins", "tokens_per_pair")
TREE_PLOTS = ("tree_shape", "generated_tokens")


def save_run(run: Path, trees, export: bool = True) -> Path:
    for tree in trees:
        tree.save(tree_path(run, tree.problem_id))  # as the runner writes them: RUN/trees/<id>.json
    if export:
        write_export(trees, run / "exports" / "step_pairs", "step_pairs", template=lambda m: "", prefix=None,
                     min_visits=None)
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A run of the example tree and its step_pairs export (written once: the export takes a second)."""
    return save_run(tmp_path_factory.mktemp("base") / "run", [example_tree()])


def report(run: Path, capsys, *extra: str) -> tuple[Path, dict, str]:
    assert main(["report", str(run), *extra]) == 0
    page = Path(capsys.readouterr().out.strip())
    return page, json.loads((page.parent / "report.json").read_text()), page.read_text()


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    try:
        from PIL import Image
    except ImportError:  # the signature, and the width and height of the IHDR chunk
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 200 and height >= 150 and len(data) > 2000
        return
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.width >= 200 and im.height >= 150
        low, high = im.convert("L").getextrema()
        assert low < high, f"{path.name} is blank"


def test_numbers_images_and_page(exported, tmp_path, capsys):
    run = shutil.copytree(exported, tmp_path / "run")
    page, data, text = report(run, capsys)
    assert page == run / "report" / "index.html"

    # The example tree by hand: pairs (1 vs 2) at depth 1 with values 0.75 / 0, and (3 vs 4) at depth 2, 1 / 0.
    pairs = data["pairs"]
    assert pairs["pairs"] == 2
    assert pairs["pairs_per_depth"] == {"1": 1, "2": 1}
    assert sorted(pairs["margins"]["values"]) == [0.75, 1.0] and pairs["margins"]["mean"] == 0.875
    assert sorted(pairs["values"]["chosen"]) == [0.75, 1.0] and pairs["values"]["rejected"] == [0.0, 0.0]
    tokens = 6 + 6 + 12 + 12 + 12 + 13 + 4 + 20  # every node's n_tokens (the tree has no runner count)
    assert pairs["tokens_per_pair"] == {"overall": tokens / 2, "per_problem": {"p1": tokens / 2},
                                        "problems_without_pairs": 0}
    # Step children: the root 4 (1, 2, 7, 8), node 1 two (3, 4), node 2 one (5; 6 is a rollout).
    assert data["trees"]["shape"] == {"p1": {"branching_factor": 7 / 3, "expanded_nodes": 3, "depth": 2,
                                             "nodes": 9}}
    assert data["trees"]["generated_tokens"] == {"p1": tokens}
    assert data["trees"]["wall_time_s"] is None
    assert data["summary"] == {"problems": 1, "nodes": 9, "generated_tokens": tokens, "pairs": 2,
                               "good_share": None, "wall_time_s": "not recorded",
                               "prefix_cache_hit_rate": "not recorded"}
    assert data["label_quality"] is None
    assert data["failures"] == {"errors": [], "problem_errors": []}

    drawn = (*PAIR_PLOTS, *TREE_PLOTS)
    assert sorted(data["images"]) == sorted(drawn)
    for name in drawn:
        png = page.parent / f"{name}.png"
        assert_png(png)
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in text
    assert not (page.parent / "label_quality.png").exists() and not (page.parent / "wall_time.png").exists()
    assert "label quality: not recorded" in text
    assert "http://" not in text and "https://" not in text  # self-contained


def test_label_quality_summary_and_failures(exported, tmp_path, capsys):
    run = shutil.copytree(exported, tmp_path / "run")
    for path in (run / "trees").glob("*.json"):  # what the runner records in a tree's meta
        tree = json.loads(path.read_text())
        tree["meta"].update(generated_tokens=120, wall_time_s=2.5)
        path.write_text(json.dumps(tree))
    stats_path = run / "exports" / "step_pairs" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["label_quality"] = {"pairs": 2, "good": 1, "inverted": 1, "bad_prefix": 0, "junk_rejected": 0,
                              "both_right": 0, "both_wrong": 0, "wrong_over_prose": 0, "prose_chosen": 0,
                              "uncheckable": 0, "good_share": 0.5}
    stats_path.write_text(json.dumps(stats))
    (run / "summary.json").write_text(json.dumps({"wall_time_s": 12.5, "prefix_cache_hit_rate": 0.8}))
    (run / "errors.jsonl").write_text(json.dumps({"problem_id": "p9", "error": "RuntimeError: <boom>",
                                                  "traceback": "Traceback ..."}) + "\n")
    (run / "problem_errors.jsonl").write_text(
        json.dumps({"file": "problems.jsonl", "line": 3, "field": "prompt", "reason": "missing"}) + "\nnot json\n")
    out = tmp_path / "elsewhere"
    page, data, text = report(run, capsys, "-o", str(out))
    assert page == out / "index.html" and not (run / "report").exists()

    assert data["label_quality"]["counts"] == {"good": 1, "inverted": 1, "bad_prefix": 0, "junk_rejected": 0,
                                               "both_right": 0, "both_wrong": 0, "wrong_over_prose": 0,
                                               "prose_chosen": 0}
    assert data["summary"]["good_share"] == 0.5
    assert data["summary"]["wall_time_s"] == 12.5 and data["summary"]["prefix_cache_hit_rate"] == 0.8
    assert data["summary"]["generated_tokens"] == 120
    assert data["pairs"]["tokens_per_pair"]["per_problem"] == {"p1": 60.0}
    assert data["trees"]["wall_time_s"] == {"p1": 2.5}
    for name in ("label_quality", "wall_time"):
        assert_png(out / f"{name}.png")
    assert len(data["failures"]["errors"]) == 1 and len(data["failures"]["problem_errors"]) == 2
    assert "RuntimeError: &lt;boom&gt;" in text and "Traceback" not in text
    assert "missing" in text and "not json" in text


def test_missing_export(tmp_path, capsys):
    run = save_run(tmp_path / "run", [example_tree()], export=False)
    (run / "report").mkdir()
    (run / "report" / "values.png").write_bytes(b"a stale plot of an earlier report")
    page, data, text = report(run, capsys)
    assert data["export"]["present"] is False and data["pairs"] is None and data["summary"]["pairs"] is None
    assert "Export missing" in text and "exports/step_pairs/rows.jsonl" in text
    assert sorted(data["images"]) == sorted(TREE_PLOTS)
    for name in TREE_PLOTS:
        assert_png(page.parent / f"{name}.png")
    assert not any((page.parent / f"{name}.png").exists() for name in PAIR_PLOTS)
    assert data["trees"]["shape"]["p1"]["branching_factor"] == 7 / 3


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run folder"),
    ("empty", "no trees"),
    ("broken", "cannot read its trees"),
])
def test_errors_are_one_line(tmp_path, capsys, case, message):
    run = tmp_path / "run"
    if case != "missing":
        (run / "trees").mkdir(parents=True)
    if case == "broken":
        (run / "trees" / "p1.json").write_text('{"problem_id": "p1", "columns": {"parent": [-1]}}')
    assert main(["report", str(run)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("treepref: report error: ") and message in lines[0]
