"""Final-answer extraction and equivalence: what a search's rewards rest on."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from treepref.problems import Problem
from treepref.verifiers.math import MathVerifier, answers_match, extract_answer, extract_boxed

SAME = [
    ("1/2", "\\frac{1}{2}"),
    ("0.5", "\\dfrac{1}{2}"),
    ("\\tfrac12", "0.5"),
    ("1,234", "1234"),
    ("\\$1,500", "1500"),
    ("5 cm", "5"),
    ("$5", "5"),
    ("5 dollars", "5"),
    ("5\\text{ cm}", "5"),
    ("50\\%", "50"),
    ("32.", "32"),
    ("−3", "-3"),
    ("x = 5", "5"),
    ("\\left(3, 2\\right)", "(3,2)"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("x + 1", "1 + x"),
    ("\\text{Monday}", "monday"),
    ("90^\\circ", "90"),
]

DIFFERENT = [
    ("3", "-3"),
    ("10", "10.5"),
    ("(2,3)", "(3,2)"),
    ("[1,2)", "(1,2)"),
    ("(1,2)", "12"),
    ("1,234", "1.234"),
    ("2x", "2"),
    ("mad", "dam"),  # sympy would read both as the product m*a*d
    ("Tuesday", "Monday"),
    ("", "0"),
]


@pytest.mark.parametrize("pred,ref", SAME)
def test_equivalent_answers_match(pred, ref):
    assert answers_match(pred, ref)


@pytest.mark.parametrize("pred,ref", DIFFERENT)
def test_different_answers_do_not_match(pred, ref):
    assert not answers_match(pred, ref)


def test_extract_boxed_takes_the_last_complete_box_with_nested_braces():
    assert extract_boxed("first \\boxed{1}, then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\fbox{7}") == "7"
    assert extract_boxed("so \\boxed 5.") == "5"
    assert extract_boxed("\\boxed{\\frac{1}{2}") is None  # unbalanced: not an answer
    assert extract_boxed("no answer here") is None


def test_extract_answer_falls_back_to_answer_is_then_hashes():
    assert extract_answer("so \\boxed{3}. The answer is 4.") == "3"
    assert extract_answer("Thus the answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert extract_answer("The answer is: 12.") == "12"
    assert extract_answer("work\n#### 1,234") == "1,234"
    assert extract_answer("nothing final") is None


def test_verifier_scores_and_abstains_without_reference():
    verify = MathVerifier()
    problem = Problem("p", "What is half of one?", answer="\\frac{1}{2}")
    assert asyncio.run(verify(problem, "0.5")) == 1.0
    assert asyncio.run(verify(problem, "The answer is 1/2.")) == 1.0
    assert asyncio.run(verify(problem, "\\boxed{2}")) == 0.0
    assert asyncio.run(verify(Problem("q", "Any?"), "0.5")) is None


def test_verifier_works_in_an_event_loop_and_in_worker_threads():
    # math-verify's signal-based timeout fails off the main thread; these paths must still verify.
    pairs = [("\\sqrt{8}", "2\\sqrt{2}"), ("x^2 + 2x + 1", "(x+1)^2"), ("\\{1, 2\\}", "\\{2, 1\\}")]
    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(lambda pr: answers_match.__wrapped__(*pr), pairs))

    async def in_loop():
        verify = MathVerifier()
        scores = await asyncio.gather(*(verify(Problem(str(i), "q", answer=r), p) for i, (p, r) in enumerate(pairs)))
        off_thread = await asyncio.to_thread(answers_match.__wrapped__, "\\frac{\\pi}{2}", "\\pi/2")
        return scores, off_thread

    scores, off_thread = asyncio.run(in_loop())
    assert scores == [1.0, 1.0, 1.0] and off_thread
