"""``treepref view``: the HTML builder on its own, the CLI's errors, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest

from treepref.cli import main
from treepref.extract.examples import example_tree
from treepref.runner import load_trees, tree_path
from treepref.tree import ROOT, Tree
from treepref.view import best_path, build_html, json_for_script, match_pairs, page_data

NASTY = "a </script><script>window.__owned = 1</script> <!-- b \u2028 & c"
BLOB = re.compile(r'<script type="application/json" id="data">(.*?)</script>', re.S)


def big_tree(n: int = 2000, seed: int = 0) -> Tree:
    """A synthetic tree of ``n`` nodes, up to 5 children a node, with visits, values, rewards and one nasty text."""
    rng = random.Random(seed)
    t = Tree(problem_id="big", prompt="A big synthetic problem", answer="7")
    open_nodes = [ROOT]
    while len(t) < n:
        parent = rng.choice(open_nodes)
        final = t.depth[parent] >= 3 and rng.random() < 0.3 or t.depth[parent] >= 14
        node = t.add(parent, f"step {len(t)} under {parent}", n_tokens=5, prior=rng.random(),
                     terminated=final, reward=float(rng.random() < 0.2) if final else None)
        if len(t.children(parent)) >= 5:
            open_nodes.remove(parent)
        if not final:
            open_nodes.append(node)
        t.backup(node, rng.random())
    deep = max(range(len(t)), key=lambda i: t.depth[i])
    t.text[deep] = NASTY
    t.logprob[deep] = float("-inf")  # not JSON: must reach the page as null
    return t


def make_run(root: Path, with_pairs: bool = False) -> Path:
    run = root / "run"
    for tree in (example_tree(), big_tree()):
        tree.save(tree_path(run, tree.problem_id))
    if with_pairs:
        rows = [{"problem_id": "p1", "prefix_steps": ["3 * 4 = 12."], "chosen": "2 + 12 = 14. The answer is 14.\n\n",
                 "rejected": "2 + 12 = 15. The answer is 15.\n\n", "chosen_value": 1.0, "rejected_value": 0.0,
                 "prompt_ids": [1, 2, 3]}]
        (run / "exports" / "step_pairs").mkdir(parents=True)
        (run / "exports" / "step_pairs" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def blob(page: str):
    found = BLOB.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


# -- without a browser ----------------------------------------------------------------------------------
def test_data_blob_round_trips_and_nasty_text_cannot_break_the_page():
    trees = [example_tree(), big_tree(300)]
    data = page_data("r", trees, None, "note")
    page = build_html(data)
    assert blob(page) == json.loads(json.dumps(data))
    texts = [n[2] for n in blob(page)["trees"][1]["nodes"]]
    assert NASTY in texts
    # the blob holds no "<" at all, so neither "</script>" nor "<!--" can end it early
    assert "<" not in BLOB.findall(page)[0]
    assert page.count("</script>") == 2  # the data's and the code's, nothing from the data
    assert "window.__owned" not in page.replace(json_for_script(NASTY), "")
    assert all(len(t["nodes"]) == len(tree) for t, tree in zip(blob(page)["trees"], trees))
    big = blob(page)["trees"][1]
    lp = data["fields"].index("logprob")
    assert None in [n[lp] for n in big["nodes"]]  # -inf became null: the JSON parses in a browser too


def test_best_path_prefers_a_success_then_the_highest_value():
    t = example_tree()
    path, rule = best_path(t)
    assert path == [0, 1, 3] and "reward" in rule  # node 3 (3 visits) beats node 8 (never visited)
    for i in range(len(t)):
        t.reward[i] = None if t.reward[i] is None else 0.0
    path, rule = best_path(t)
    assert path == [0, 1, 3] and "highest value" in rule  # Q 0.75 > 0 > unvisited; then 1.0 > 0.0


def test_pairs_match_sibling_nodes_by_prefix_and_step_text():
    t = example_tree()
    rows = [{"problem_id": "p1", "prefix_steps": [], "chosen": "3 * 4 = 12.\n\n", "rejected": "2 + 3 = 5.\n\n",
             "chosen_value": 0.75, "rejected_value": 0.0},
            {"problem_id": "p1", "prefix_steps": ["3 * 4 = 12."],
             "chosen": [{"role": "assistant", "content": "2 + 12 = 14. The answer is 14.\n\n"}],
             "rejected": [{"role": "assistant", "content": "2 + 12 = 15. The answer is 15.\n\n"}],
             "chosen_value": 1.0, "rejected_value": float("nan")},
            {"problem_id": "p1", "prefix_steps": ["2 + 3 = 5."], "chosen": "nothing like it\n\n",
             "rejected": "5 * 4 = 20. The answer is 20.\n\n", "chosen_value": 1, "rejected_value": 0},
            {"problem_id": "other", "prefix_steps": [], "chosen": "3 * 4 = 12.\n\n", "rejected": "2 + 3 = 5.\n\n"}]
    pairs, missed = match_pairs(t, rows)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(1, 2), (3, 4)]
    assert pairs[1]["rejected_value"] is None and missed == 1


def test_cli_writes_the_page_and_reports_errors_in_one_line(tmp_path, capsys):
    run = make_run(tmp_path, with_pairs=True)
    assert main(["view", str(run)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(run / "view.html")
    data = blob((run / "view.html").read_text(encoding="utf-8"))
    assert [t["id"] for t in data["trees"]] == ["big", "p1"]
    p1 = data["trees"][1]
    assert [(p["chosen"], p["rejected"]) for p in p1["pairs"]] == [(3, 4)]  # from rows.jsonl
    assert "rows.jsonl" in data["pairs_note"]

    other = tmp_path / "elsewhere" / "v.html"
    assert main(["view", str(run), "--problem", "p1", "-o", str(other)]) == 0
    assert capsys.readouterr().out.strip() == str(other)
    assert blob(other.read_text(encoding="utf-8"))["selected"] == "p1"

    (tmp_path / "empty").mkdir()
    for argv in (["view", str(tmp_path / "nope")], ["view", str(tmp_path / "empty")],
                 ["view", str(run), "--problem", "zz"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("treepref: view error: ") and err.count("\n") == 1, err


def test_pairs_are_computed_when_the_run_has_no_export(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["view", str(run)]) == 0
    data = blob((run / "view.html").read_text(encoding="utf-8"))
    p1 = next(t for t in data["trees"] if t["id"] == "p1")
    assert (1, 2) in [(p["chosen"], p["rejected"]) for p in p1["pairs"]]
    assert "computed" in data["pairs_note"]


# -- in a real browser ----------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in (os.environ.get("TREEPREF_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on PATH (scripts/setup.sh installs Debian's package; or set TREEPREF_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[view]'")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()


def test_page_in_headless_chromium(browser, tmp_path, capsys):
    run = make_run(tmp_path, with_pairs=True)
    assert main(["view", str(run)]) == 0
    capsys.readouterr()
    trees = {t.problem_id: t for t in load_trees(run)}
    big = trees["big"]

    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto((run / "view.html").resolve().as_uri())

    # the picker lists both trees; the page's data holds every node of each
    options = page.locator("#picker option").all_inner_texts()
    assert len(options) == 2 and options[0].startswith("big") and options[1].startswith("p1")
    counts = page.evaluate("JSON.parse(document.getElementById('data').textContent).trees.map(t => t.nodes.length)")
    assert counts == [len(big), len(trees["p1"])]

    # lazily built: most of the 2000 nodes are not in the DOM; expanding a collapsed node builds its children
    assert page.locator("#tree li.node").count() < len(big) / 4
    shut = page.locator("#tree li.node:not(.open)[data-kids]").first
    node = int(shut.get_attribute("data-id"))
    kids = big.children(node, kind=None)
    assert kids and page.locator(f'#tree li.node[data-id="{kids[0]}"]').count() == 0
    shut.locator(":scope > .row > .tog").click()
    for c in kids:
        assert page.locator(f'#tree li.node[data-id="{c}"]').is_visible()

    # search across the run: a deep step (collapsed, in the nasty text) is found, revealed and highlighted
    deep = big.text.index(NASTY)
    page.fill("#search", "</script><script>window")
    page.locator("#results button").first.wait_for()
    assert "1 match in 1 tree" in page.inner_text("#count")
    page.locator("#results button").first.click()
    hit = page.locator(f'#tree li.node[data-id="{deep}"]')
    assert hit.is_visible() and "focus" in hit.get_attribute("class")
    assert hit.locator(":scope > .row > .text").inner_text().replace("\n", " ").startswith("a </script>")
    assert hit.locator(":scope > .row mark").count() == 1
    assert page.evaluate("window.__owned === undefined")

    # the small tree: its best path and its exported pair are marked
    page.select_option("#picker", index=1)
    assert page.locator("#tree li.best").count() == 3
    assert page.locator('#tree li.node[data-id="3"] .b.chosen').inner_text().startswith("✓ chosen")
    assert page.locator('#tree li.node[data-id="4"] .b.rejected').count() == 1

    shot = tmp_path / "view.png"
    page.screenshot(path=str(shot))
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    try:
        from PIL import Image, ImageStat
    except ImportError:
        assert shot.stat().st_size > 10_000
    else:
        stat = ImageStat.Stat(Image.open(shot).convert("L"))
        assert stat.stddev[0] > 10, stat.stddev  # not one colour
    page.close()
