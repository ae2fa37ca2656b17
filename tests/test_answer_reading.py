"""read_answer: THE rule for reading the final answer a step of model text states.

Stated answers (boxed, answer phrases, result phrases) count whether or not the sequence ended; the
end-of-sequence fallback reads only the value a step concludes with, never an operand or a mention.
"""

from __future__ import annotations

import re

import pytest

from treepref.verifiers.math import extract_answer, read_answer


def cases(*rows):
    """Parametrise (id, text, expected) rows with the id as the test's readable name."""
    return pytest.mark.parametrize("text, expected", [pytest.param(t, e, id=i) for i, t, e in rows])


# -- stated answers: read with and without the end of the sequence ------------------------------------
@cases(
    ("boxed", "Thus \\boxed{16}", "16"),
    ("boxed-last-wins", "first \\boxed{1}, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("fbox", "\\fbox{7}", "7"),
    ("boxed-negative-in-math", "The final answer is $\\boxed{-5}$.", "-5"),
    ("boxed-beats-answer-phrase", "so \\boxed{3}. The answer is 4.", "3"),
)
def test_boxed(text, expected):
    assert read_answer(text) == expected
    assert read_answer(text, ended=True) == expected


@cases(
    ("answer-is", "The answer is 16.", "16"),
    ("answer-is-still", "We check again, and the answer is still 26.", "26"),
    ("final-answer-is", "So the final answer is 42.", "42"),
    ("answer-colon", "Answer: 7", "7"),
    ("answer-is-colon", "The answer is: 12.", "12"),
    ("bold-answer-colon", "**Answer:** 1,234", "1,234"),
    ("answer-equals", "answer = 9", "9"),
    ("answer-to-the-question", "The answer to the question is 11.", "11"),
    ("answer-to-an-expression", "The answer to 13 + 3 is 16.", "16"),
    ("n-is-the-answer", "So 26 is the answer.", "26"),
    ("n-is-the-final-answer", "$\\frac{3}{4}$ is the final answer.", "\\frac{3}{4}"),
    ("hashes", "work\n#### 1,234", "1,234"),
    ("case-insensitive", "THE ANSWER IS 8.", "8"),
    ("last-phrase-wins", "The answer is 5. No, wait: the answer is 6.", "6"),
    ("skips-a-phrase-with-no-value", "The answer is 6. Checking, the answer is not clear.", "6"),
)
def test_answer_phrases(text, expected):
    assert read_answer(text) == expected
    assert read_answer(text, ended=True) == expected


@cases(
    ("integer-in-math", "The answer is $7$.", "7"),
    ("markdown-bold", "The answer is **7**.", "7"),
    ("whole-line-bold", "**The answer is 7.**", "7"),
    ("negative", "The answer is -3.", "-3"),
    ("negative-bold", "The answer is **-3**.", "-3"),
    ("unicode-minus", "The answer is −3", "−3"),
    ("decimal", "The answer is 2.5 cups.", "2.5"),
    ("thousands", "The answer is 1,234.", "1,234"),
    ("millions", "the answer is 1,234,567.", "1,234,567"),
    ("currency", "The answer is $1,500.", "1,500"),
    ("percent", "The answer is 50%.", "50%"),
    ("slash-fraction", "The final answer is 3/4.", "3/4"),
    ("latex-fraction", "Thus the answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("dfrac", "The answer is \\dfrac{3}{4}.", "\\dfrac{3}{4}"),
    ("unit-words-dropped", "The answer is 16 apples.", "16"),
    ("stops-at-because", "The answer is 12 because 5 + 7 = 12.", "12"),
    ("stops-at-and", "The answer is 16 apples and 3 pears.", "16"),
    ("expression", "The answer is 2x + 1.", "2x + 1"),
    ("sqrt", "The answer is \\sqrt{2}.", "\\sqrt{2}"),
    ("tuple", "The answer is (3, 2).", "(3, 2)"),
    ("word-answer", "The answer is Monday.", "Monday"),
    ("choice", "The answer is (C).", "(C)"),
)
def test_answer_values(text, expected):
    assert read_answer(text) == expected


@cases(
    ("phrase-then-equation", "The answer is 3 + 4 = 7.", "7"),
    ("phrase-then-equation-in-math", "The answer is $3 + 4 = 7$.", "7"),
    ("phrase-then-chain", "The answer is 13 + 3 = 16 + 2 = 18.", "18"),
    ("phrase-then-equation-with-units", "The answer is 13 + 3 = 16 apples.", "16"),
    ("phrase-then-variable", "The answer is x = 5.", "5"),
    ("result-then-equation", "The total is 13 + 3 = 16.", "16"),
)
def test_phrase_followed_by_an_equation_reads_its_right_hand_side(text, expected):
    assert read_answer(text) == expected


@cases(
    ("not", "The answer is not clear.", None),
    ("prose", "The answer is the sum of 3 and 4.", None),
    ("clause-opener-word", "Answer: First, we add.", None),
    ("verb-answer", "To answer this, 13 + 3 = 16", None),
    ("mentioned", "We need to find the answer. First 13 + 3 = 16.", None),
    ("markdown-heading", "#### Solution", None),
)
def test_answer_phrases_without_a_value_are_no_answer(text, expected):
    assert read_answer(text) is expected


# -- result phrases: stated only as the step's last sentence ------------------------------------------
@cases(
    ("result-is", "The result is 42.", "42"),
    ("final-result-is", "So the final result is 42.", "42"),
    ("total-is", "The total is 26 apples.", "26"),
    ("total-number-of", "The total number of apples is 26.", "26"),
    ("total-cost", "The total cost is $26.50.", "26.50"),
    ("n-is-the-total", "16 is the total.", "16"),
    ("n-is-the-total-number", "16 is the total number of apples.", "16"),
)
def test_result_phrases_as_the_last_sentence(text, expected):
    assert read_answer(text) == expected


@cases(
    ("total-then-more-work", "The total is 12. Then she gives away 5.", None),
    ("total-then-clause", "The total is 12 apples and then she eats 3.", None),
    ("result-of-operation", "22 is the result of 11 multiplied by 2.", None),
    ("result-of-operation-phrase-first", "The result of 11 multiplied by 2 is 22.", None),
    ("sum-is-not-a-final-phrase", "The sum of 13 and 3 is 16.", None),
    ("result-is-an-operation", "The result is 3 + 4.", None),
)
def test_result_phrases_that_do_not_state_a_final_answer(text, expected):
    assert read_answer(text) is expected


# -- the end-of-sequence fallback: the value a step concludes with ------------------------------------
@cases(
    ("result-of-operation", "22 is the result of 11 multiplied by 2.", "22"),
    ("result-of-operation-phrase-first", "The result of 11 multiplied by 2 is 22.", "22"),
    ("we-get", "so we get 16", "16"),
    ("equation", "Therefore, 13 + 3 = 16.", "16"),
    ("chain", "13 + 3 = 16 + 2 = 18.", "18"),
    ("last-equation", "13 + 3 = 16, and 16 - 2 = 14.", "14"),
    ("equation-in-math", "So $13 \\times 2 = 26$.", "26"),
    ("equation-with-currency", "She pays 4 * 4 = $16.", "16"),
    ("equals-word", "So 13 plus 3 equals 16.", "16"),
    ("op-in-words-is", "13 plus 3 is 16.", "16"),
    ("which-is", "We add 13 and 3, which is 16.", "16"),
    ("this-gives", "Adding them gives 16.", "16"),
    ("sum-of-is", "The sum of 13 and 3 is 16.", "16"),
    ("result-restated", "13 * 2 = 26 apples. So he has 26 apples.", "26"),
    ("fraction", "This gives us 3/4 of the cake.", "3/4"),
    ("negative", "So 3 - 6 = -3.", "-3"),
    ("thousands", "So 1,000 + 234 = 1,234.", "1,234"),
    ("decimal", "So 2 * 1.25 = 2.5.", "2.5"),
)
def test_fallback_reads_the_concluded_value(text, expected):
    assert read_answer(text, ended=True) == expected


@cases(
    ("mention", "Let's look at 13 and 3.", None),
    ("operands-in-words", "11 multiplied by 2", None),
    ("operands-with-operator", "3 + 4", None),
    ("rhs-is-an-expression", "x = 3 + 4", None),
    ("rhs-is-algebra", "so y = 2x", None),
    ("rhs-is-a-division", "that gives 12 / 4", None),
    ("went-on-to-other-numbers", "16 - 2 = 14. Then we multiply 14 by 3.", None),
    ("equation-then-other-numbers", "5 * 3 = 15, for 3 days", None),
    ("giving-is-not-a-result", "Mary gives 3 apples to John.", None),
    ("making-is-not-a-result", "She makes 12 cookies.", None),
    ("no-numbers", "I am not sure.", None),
)
def test_fallback_never_takes_an_operand_or_a_mention(text, expected):
    assert read_answer(text, ended=True) is expected


@pytest.mark.parametrize("text", [
    pytest.param("22 is the result of 11 multiplied by 2.", id="result-of-operation"),
    pytest.param("so we get 16", id="we-get"),
    pytest.param("Therefore, 13 + 3 = 16.", id="equation"),
    pytest.param("13 plus 3 is 16.", id="op-in-words-is"),
    pytest.param("Let's look at 13 and 3.", id="mention"),
])
def test_without_the_end_of_the_sequence_there_is_no_fallback(text):
    assert read_answer(text) is None
    assert read_answer(text, ended=False) is None
    assert extract_answer(text) is None


# -- a user's own pattern -----------------------------------------------------------------------------
@cases(
    ("own-marker", "Work...\nRESULT>> 59", "59"),
    ("own-marker-last-match", "RESULT>> 58\nRESULT>> 59", "59"),
    ("own-marker-tidied", "RESULT>> $59$.", "59"),
    ("tried-before-boxed", "\\boxed{3} RESULT>> 4", "4"),
    ("no-match-falls-back-to-the-rules", "The answer is 16.", "16"),
)
def test_user_pattern_is_tried_first(text, expected):
    assert read_answer(text, pattern=re.compile(r"RESULT>>\s*(\S+)")) == expected


def test_user_pattern_as_a_string_and_without_a_group():
    assert read_answer("result>> 59", pattern=r"RESULT>>\s*(\S+)") == "59"  # compiled case-insensitive
    with pytest.raises(ValueError):
        read_answer("59", pattern=re.compile(r"\d+"))


def test_extract_answer_is_the_rule_without_the_fallback():
    assert extract_answer("The answer is 3 + 4 = 7.") == "7"
    assert extract_answer("work\n#### 1,234") == "1,234"
    assert extract_answer("Therefore, 13 + 3 = 16.") is None
    assert read_answer("Therefore, 13 + 3 = 16.", ended=True) == "16"
