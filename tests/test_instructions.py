"""The instruction-following domain: exact constraint checks, seeded compatible generation, IFEval loading."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from treepref.domains.instructions import (
    KINDS, Constraint, check, conflicts, count_words, generate, instruction_reward, instruction_step_scorer,
    load_ifeval, passes, score, split_sentences,
)
from treepref.problems import Problem

SAMPLE = Path(__file__).parent / "data" / "instructions" / "ifeval_sample.jsonl"


def c(cid: str, **kwargs) -> Constraint:
    return Constraint(cid, kwargs)


# -- each constraint on passing and failing responses -------------------------------------------------

CASES = [
    # (id, kwargs, passing responses, failing responses)
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5},
     ["one two three four five", "Don't stop me now."], ["Don't stop now.", ""]),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5},
     ["one two three four", ""], ["one, two, three, four, five."]),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3},
     ["It rained. We stayed in! Was it fun?", "First line\nSecond line\nThird line", 'He said "go." We went. Done'],
     ["It cost 3.5 dollars. That is all.", "Hello!!! ...   \n\n"]),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 2},
     ["Just one sentence here.", "Pi is 3.14 or so"], ["One. Two.", "Mr. Smith came."]),
    ("keywords:existence", {"keywords": ["garden", "ice cream"]},
     ["The Garden, with (ice\ncream)!", "garden's ice cream."], ["gardens and ice cream", "kindergarden ice cream",
                                                                  "garden icecream"]),
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]},
     ["A caterpillar and a hotdog.", "Concatenate."], ["My Cat.", "the dog-house", "(dog)"]),
    ("keywords:frequency", {"keyword": "rain", "frequency": 2, "relation": "at least"},
     ["Rain, rain, go away.", "rain. RAIN!"], ["rain and rainbow and drain", ""]),
    ("keywords:frequency", {"keyword": "rain", "frequency": 2, "relation": "less than"},
     ["rain and rainbow", "sunny"], ["rain? Rain!"]),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     ["Intro\n* one\n- two\nOutro", "  * nested one\n\t- two", "* one\n* two\n---\n**bold**\n-5 degrees"],
     ["* one", "* one\n- two\n* three", "*one\n-two", "* \n- "]),
    ("detectable_format:json_format", {},
     ['{"a": 1}', '  ```json\n{"a": [1, 2]}\n```  ', "```\n[1]\n```", "```JSON\n{}\n```", '"just a string"'],
     ["{'a': 1}", "Here it is: {\"a\": 1}", "```json\n{\"a\": 1}\n``` done", "", "```json\n```"]),
    ("change_case:english_lowercase", {}, ["all lower, 123!", "émile"], ["Not lower", "ÉMILE"]),
    ("change_case:english_capital", {}, ["ALL CAPS, 123!", "ÉMILE"], ["ALMOST caps", "Émile"]),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     ["Done. Any other questions?", "done. any other questions?  \n\n", "ANY OTHER QUESTIONS?"],
     ["Any other questions? Yes.", "Any other questions", "Any other questions?!"]),
    ("startend:quotation", {}, ['"quoted"', '  "a" and "b"\n'], ['"', "quoted", '"open']),
    ("punctuation:no_comma", {}, ["No commas here.", "1.000 and 2;3"], ["One, two", "1,000"]),
    ("detectable_format:title", {}, ["<<A Title>>\nText", "text <<t>>"], ["<< >>", "<<two\nlines>>", "<title>"]),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     ["Dear [name], at [address].", "[a][b]"], ["Dear [name].", "Dear name"]),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     ["Hi.\n\np.s. bring snacks", "Hi.\n  P.S. more"], ["Hi. P.S. inline", "Hi.\nPS no dots"]),
]


@pytest.mark.parametrize("cid, kwargs, good, bad", CASES, ids=[f"{x[0]}-{i}" for i, x in enumerate(CASES)])
def test_constraint_checks(cid, kwargs, good, bad):
    con = Constraint(cid, kwargs)
    for response in good:
        assert con.check(response), response
    for response in bad:
        assert not con.check(response), response
    assert con.describe().strip()


def test_every_kind_is_covered_by_a_case():
    assert {x[0] for x in CASES} == set(KINDS)


def test_word_and_sentence_measures():
    assert count_words("Don't stop-me now, 3.5 times") == 8
    assert split_sentences("One. Two!\nThree\n\n? Four") == ["One", "Two", "Three", "Four"]


def test_constraint_validation():
    assert Constraint("keywords:existence", {"keywords": ["a"], "num_words": None}).kwargs == {"keywords": ["a"]}
    assert c("length_constraints:number_words", relation="at least", num_words=5.0).kwargs["num_words"] == 5
    for cid, kwargs in [("nope:nope", {}), ("length_constraints:number_words", {"relation": "at least"}),
                        ("length_constraints:number_words", {"relation": "about", "num_words": 5}),
                        ("length_constraints:number_words", {"relation": "at least", "num_words": 0}),
                        ("length_constraints:number_words", {"relation": "at least", "num_words": True}),
                        ("keywords:existence", {"keywords": []}), ("keywords:existence", {"keywords": "a"}),
                        ("punctuation:no_comma", {"extra": 1}), ("startend:end_checker", {"end_phrase": " "})]:
        with pytest.raises(ValueError):
            Constraint(cid, kwargs)


def test_conflicts():
    assert conflicts([c("change_case:english_lowercase"), c("change_case:english_capital")])
    assert conflicts([c("detectable_format:json_format"), c("detectable_format:number_bullet_lists", num_bullets=2)])
    assert conflicts([c("keywords:existence", keywords=["rain"]),
                      c("keywords:forbidden_words", forbidden_words=["RAIN"])])
    assert conflicts([c("punctuation:no_comma"), c("startend:end_checker", end_phrase="Bye, now.")])
    assert conflicts([c("punctuation:no_comma"), c("punctuation:no_comma")])
    assert not conflicts([c("keywords:frequency", keyword="rain", frequency=2, relation="less than"),
                          c("keywords:forbidden_words", forbidden_words=["rain"])])


# -- check / score / passes / async verifiers ---------------------------------------------------------

def _problem(*constraints: Constraint) -> Problem:
    return Problem("p", "task", meta={"constraints": [x.to_dict() for x in constraints]})


PROBLEM = _problem(c("punctuation:no_comma"), c("change_case:english_lowercase"),
                   c("startend:end_checker", end_phrase="Bye."))


def test_check_score_passes():
    assert check(PROBLEM, "hi there. bye.") == [True, True, True]
    assert check(PROBLEM.meta, "Hi, there.") == [False, False, False]
    assert check(PROBLEM.meta["constraints"], "hi, bye.") == [False, True, True]
    assert score(PROBLEM, "hi, bye.") == pytest.approx(2 / 3)
    assert passes(PROBLEM, "hi. bye.  \n") and not passes(PROBLEM, "hi, bye.")
    assert score(_problem(), "anything") == 1.0
    with pytest.raises(ValueError):
        check(Problem("x", "y"), "z")


def test_async_reward_and_step_scorer():
    assert asyncio.run(instruction_reward(PROBLEM, "hi. bye.")) == 1.0
    assert asyncio.run(instruction_reward(PROBLEM, "Hi, bye.")) == pytest.approx(1 / 3)
    out = asyncio.run(instruction_step_scorer([PROBLEM, PROBLEM], [["hello", "Then, bye."], []]))
    assert out == [[pytest.approx(2 / 3), pytest.approx(1 / 3)], []]
    out = asyncio.run(instruction_step_scorer([PROBLEM], [["first part", "so bye."]]))
    assert out == [[pytest.approx(2 / 3), 1.0]]


# -- generation ---------------------------------------------------------------------------------------

FILLER = "calm"


def witness(problem: Problem) -> str:
    """A response built to satisfy the problem's constraints (proves each generated problem satisfiable)."""
    cs = {x["id"]: x["kwargs"] for x in problem.meta["constraints"]}
    needed = list(cs.get("keywords:existence", {}).get("keywords", []))
    if freq := cs.get("keywords:frequency"):
        needed += [freq["keyword"]] * (freq["frequency"] if freq["relation"] == "at least" else 1)
    pad, extra = 0, 0

    def build() -> str:
        body = " ".join(["we", "saw", *needed, *[FILLER] * pad, "today"]) + "."
        sentences = [body, *["it was calm."] * extra]
        if "detectable_format:json_format" in cs:
            text = json.dumps({"text": " ".join(sentences)})
        else:
            bullets = [f"* item {i} was fine." for i in range(cs.get("detectable_format:number_bullet_lists", {})
                                                              .get("num_bullets", 0))]
            end = [cs["startend:end_checker"]["end_phrase"]] if "startend:end_checker" in cs else []
            text = "\n".join([*sentences, *bullets, *end])
        if "change_case:english_lowercase" in cs:
            text = text.lower()
        if "change_case:english_capital" in cs:
            text = text.upper()
        return text

    words = cs.get("length_constraints:number_words")
    sents = cs.get("length_constraints:number_sentences")
    while words and words["relation"] == "at least" and count_words(build()) < words["num_words"]:
        pad += 1
    while sents and sents["relation"] == "at least" and len(split_sentences(build())) < sents["num_sentences"]:
        extra += 1
    return build()


def test_generation_is_deterministic():
    assert generate(10, seed=3) == generate(10, seed=3)
    assert generate(10, seed=3) != generate(10, seed=4)
    assert generate(12, seed=3)[:10] == generate(10, seed=3)
    assert generate(5, seed=3, n_constraints=3) != generate(5, seed=3, n_constraints=2)
    assert len({p.prompt for p in generate(100, seed=0)}) > 90


@pytest.mark.parametrize("n", [1, 2, 4, 9])
def test_generated_problems_are_compatible_and_satisfiable(n):
    problems = generate(200, seed=7, n_constraints=n)
    assert [p.id for p in problems[:2]] == ["inst-7-0", "inst-7-1"]
    seen = set()
    for p in problems:
        assert p.answer is None
        assert json.loads(json.dumps(p.meta)) == p.meta
        cons = [Constraint(x["id"], x["kwargs"]) for x in p.meta["constraints"]]
        assert len(cons) == n and not conflicts(p), (p.prompt, conflicts(p))
        assert p.prompt.startswith(p.meta["task"])
        for con in cons:
            assert con.describe() in p.prompt
        response = witness(p)
        assert passes(p, response), (p.prompt, response, check(p, response))
        seen.update(con.id for con in cons)
    if n == 4:  # (with 9 constraints JSON cannot occur: it excludes bullets, sentences and end phrases)
        generated = {"length_constraints:number_words", "length_constraints:number_sentences", "keywords:existence",
                     "keywords:forbidden_words", "keywords:frequency", "detectable_format:number_bullet_lists",
                     "detectable_format:json_format", "change_case:english_lowercase", "change_case:english_capital",
                     "startend:end_checker", "punctuation:no_comma"}
        assert seen == generated


def test_generation_rejects_bad_n_constraints():
    for n in (0, 10):
        with pytest.raises(ValueError):
            generate(1, n_constraints=n)


# -- IFEval files -------------------------------------------------------------------------------------

def test_load_ifeval_sample():
    problems, errors = load_ifeval(SAMPLE)
    assert [p.id for p in problems] == ["101", "102", "103", "104", "105", "106"]
    p = problems[1]
    assert p.meta["constraints"] == [
        {"id": "length_constraints:number_words", "kwargs": {"relation": "at least", "num_words": 60}},
        {"id": "keywords:existence", "kwargs": {"keywords": ["bread", "cheese"]}},
    ]
    assert p.prompt.startswith("Describe your favourite market")
    assert passes(problems[2], "please rinse the bins first.\nthanks for helping out.")
    assert [(e.line, e.field) for e in errors] == [(7, "instruction_id_list"), (8, "kwargs")]
    assert "language:response_language" in errors[0].reason and str(SAMPLE) == errors[0].file


def test_load_ifeval_bad_rows(tmp_path):
    rows = [
        {"id": "a", "prompt": "ok", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [None]},
        {"key": 2, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 3, "prompt": "p", "kwargs": []},
        {"key": 4, "prompt": "p", "instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": []}]},
        {"key": 5, "prompt": "p", "instruction_id_list": "punctuation:no_comma", "kwargs": [{}]},
        {"key": 6, "prompt": "p", "instruction_id_list": ["x:y", "z:w"], "kwargs": [{}, {}]},
        {"id": "a", "prompt": "dup", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"prompt": "no kwargs", "instruction_id_list": ["change_case:english_capital"]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    problems, errors = load_ifeval(path)
    assert [p.id for p in problems] == ["a", "rows-8"]
    assert [(e.line, e.field) for e in errors] == [
        (2, "prompt"), (3, "instruction_id_list"), (4, "kwargs"), (5, "instruction_id_list"),
        (6, "instruction_id_list"), (6, "instruction_id_list"), (7, "id"), (9, None)]
    with pytest.raises(FileNotFoundError):
        load_ifeval(tmp_path / "missing.jsonl")


def test_problem_sources_instructions_and_ifeval():
    from treepref.domains import build_problems

    problems, errors = build_problems("instructions", count=3, seed=4, options={"n_constraints": 3})
    assert [p.id for p in problems] == ["inst-4-0", "inst-4-1", "inst-4-2"] and not errors
    assert all(len(p.meta["constraints"]) == 3 for p in problems)
    good, bad = build_problems("ifeval", path=str(Path(__file__).parent / "data" / "instructions" / "ifeval_sample.jsonl"))
    assert len(good) == 6 and [(e.line, e.field) for e in bad] == [(7, "instruction_id_list"), (8, "kwargs")]
