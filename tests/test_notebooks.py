"""The notebooks run top to bottom (code cells executed in order in one namespace), print what they are about,
and end with the viewer page and a plot.

Each notebook prints ``viewer page: <path>`` and ``plot: <path>``; both files must exist when it is done. The
notebooks make their folders with ``tempfile.mkdtemp``, pointed here at the test's own temporary folder.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

# What each notebook must print: a notebook added without an entry here fails until it has one.
EXPECTED = {
    "walkthrough": ("pairs;", "ranked lists"),
    "labels": ("stepwise rows", "agree with the exact checker on"),
    "training": ("pairs; first:", "after training", "verifier after training"),
    "environments": ("conformance: ok", "pairs;", "depth 1:"),
}


def run_notebook(path: Path) -> None:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    namespace: dict = {"__name__": "__notebook__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)


def printed_path(out: str, label: str) -> Path:
    found = re.findall(rf"^{re.escape(label)}: (\S+)$", out, flags=re.MULTILINE)
    assert found, f"the notebook printed no '{label}: <path>' line"
    return Path(found[-1])


def test_every_notebook_is_saved_without_outputs():
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} cell {i}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, model_dir, tmp_path, monkeypatch, capsys):
    assert path.stem in EXPECTED, f"add what {path.name} must print to EXPECTED"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run_notebook(path)
    out = capsys.readouterr().out
    for text in EXPECTED[path.stem]:
        assert text in out, f"{path.name} did not print {text!r}"
    page = printed_path(out, "viewer page")
    assert page.suffix == ".html" and page.is_file(), page
    assert "<html" in page.read_text(encoding="utf-8")[:2000].lower()
    plot = printed_path(out, "plot")
    assert plot.suffix == ".png" and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
