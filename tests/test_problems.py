"""Problem loading: bad rows are reported precisely and never stop the good ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treepref.domains import build_problems
from treepref.problems import Problem, ProblemError, ProblemLoadError, from_dataset, load_problems

DATA = Path(__file__).parent / "data"


def test_malformed_rows_are_each_reported_and_good_rows_loaded():
    path = DATA / "problems_mixed.jsonl"
    problems, errors = load_problems(path)
    assert [p.id for p in problems] == ["p1", "p2", "problems_mixed-9", "p11"]
    assert problems[1].answer == "24" and problems[1].meta == {"source": "hand-written"}
    assert problems[2].prompt == [{"role": "user", "content": "Half of 10?"}]
    assert problems[3].answer is None
    by_line = {e.line: e for e in errors}
    assert sorted(by_line) == [3, 4, 5, 7, 8, 10, 11]  # line 6 is blank, not an error
    assert all(e.file == str(path) for e in errors)
    assert "bad JSON" in by_line[3].reason and by_line[3].field is None
    assert (by_line[4].field, by_line[4].reason) == ("prompt", "missing prompt")
    assert by_line[5].field == "prompt" and "int" in by_line[5].reason
    assert by_line[7].field == "id" and "duplicate" in by_line[7].reason and "line 1" in by_line[7].reason
    assert (by_line[8].field, by_line[8].reason) == ("prompt", "empty prompt")
    assert "not a JSON object" in by_line[10].reason
    assert by_line[11].field == "answer"
    assert str(by_line[4]) == f"{path}:4: prompt: missing prompt"


def test_custom_field_names_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"qid": "a", "question": "1 + 1?", "gold": "2"}, {"qid": "b", "question": "", "gold": "0"},
            {"qid": "a", "question": "again", "gold": "3"}]
    path = tmp_path / "set.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems, errors = load_problems(path, id_field="qid", prompt_field="question", answer_field="gold")
    assert problems == [Problem("a", "1 + 1?", "2")]
    assert [(e.line, e.field) for e in errors] == [(2, "question"), (3, "qid")]


def test_not_utf8_line_is_reported(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n')
    problems, errors = load_problems(path)
    assert [p.id for p in problems] == ["p-1"] and [e.line for e in errors] == [2]


def test_from_dataset_validates_like_a_file():
    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": "What is 3 + 4?", "answer": "7"}, {"prompt": " ", "answer": "1"}])
    problems, errors = from_dataset(ds, name="toy")
    assert problems == [Problem("toy-1", "What is 3 + 4?", "7")]
    assert errors == [ProblemError("toy", 2, "prompt", "empty prompt")]


def test_load_error_message_lists_rows():
    _, errors = load_problems(DATA / "problems_mixed.jsonl")
    message = str(ProblemLoadError(errors))
    assert "7 malformed" in message and "problems_mixed.jsonl:4: prompt" in message


def test_gsm8k_sample():
    problems, errors = build_problems("gsm8k", path=DATA / "gsm8k_sample.jsonl")
    assert [p.answer for p in problems] == ["66", "1500", "5", "42"]  # "1,500" loses its comma
    assert problems[0].prompt.startswith("A baker") and "####" in problems[0].meta["solution"]
    assert [(e.line, e.field) for e in errors] == [(4, "answer")]


def test_math_folder_and_jsonl_samples():
    problems, errors = build_problems("math", path=DATA / "math_sample")
    assert [(p.id, p.answer) for p in problems] == [
        ("algebra/1", "5"), ("algebra/2", "\\frac{5}{6}"), ("geometry/3", "2\\sqrt{2}")]
    assert problems[2].meta["level"] == "Level 3" and problems[2].meta["type"] == "Geometry"
    assert sorted(Path(e.file).name for e in errors) == ["4.json", "5.json"]
    problems, errors = build_problems("math", path=DATA / "math_sample.jsonl", count=2)
    assert [p.answer for p in problems] == ["(3, 2)", "15"]
    assert [(e.line, e.field) for e in errors] == [(3, "solution")]


def test_build_problems_arithmetic_and_file(tmp_path):
    problems, errors = build_problems("arithmetic", count=4, seed=7, difficulty=2)
    assert len(problems) == 4 and errors == [] and problems[0].id == "arith-7-0"
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(5)))
    problems, _ = build_problems("file", path=path, count=3)
    assert [p.id for p in problems] == ["p-1", "p-2", "p-3"]


def test_build_problems_split_and_bad_sources(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"prompt": "x?", "answer": "1"}\n')
    problems, _ = build_problems("file", path=tmp_path, split="test")
    assert [p.id for p in problems] == ["test-1"]
    with pytest.raises(ValueError, match="unknown problems source"):
        build_problems("nope")
    with pytest.raises(ValueError, match="path"):
        build_problems("gsm8k")
    with pytest.raises(FileNotFoundError):
        build_problems("file", path=tmp_path / "missing.jsonl")


def test_reasoning_gym_adapter_is_deterministic():
    pytest.importorskip("reasoning_gym")
    a, errors = build_problems("reasoning_gym", task="basic_arithmetic", count=3, seed=5)
    b, _ = build_problems("reasoning-gym", task="basic_arithmetic", count=3, seed=5)
    c, _ = build_problems("reasoning_gym", task="basic_arithmetic", count=3, seed=6)
    assert errors == [] and a == b and a != c
    assert all(p.prompt and p.answer is not None and p.meta["task"] == "basic_arithmetic" for p in a)
    json.dumps([p.meta for p in a])  # meta must survive saving trees as JSON
    gsm, _ = build_problems("reasoning_gym", task="gsm_symbolic", count=2, seed=1)
    assert len(gsm) == 2 and all(p.answer for p in gsm)
