"""The arithmetic domain: deterministic problems and exact step checks (the label-quality yardstick)."""

from __future__ import annotations

import asyncio
import re
from fractions import Fraction

import pytest

from treepref.domains.arithmetic import (arithmetic_step_scorer, check_step, counted_step, derived_step, equations,
                                        generate, grounded_step, is_correct_path, on_track)
from treepref.problems import Problem


def _ops(expression: str) -> int:
    return len(re.findall(r" [-+*] ", expression))


def test_same_seed_same_problems_other_seed_different():
    assert generate(5, seed=3) == generate(5, seed=3)
    assert generate(5, seed=3) != generate(5, seed=4)
    assert generate(8, seed=3)[:5] == generate(5, seed=3)  # problem i does not depend on count
    assert len({p.prompt for p in generate(50, seed=0)}) > 45


@pytest.mark.parametrize("difficulty", [1, 2, 4, 7])
def test_difficulty_is_the_number_of_operations(difficulty):
    for p in generate(20, seed=1, difficulty=difficulty):
        assert _ops(p.meta["expression"]) == difficulty == len(p.meta["intermediates"])
        assert p.meta["difficulty"] == difficulty


def test_numbers_grow_with_difficulty():
    def biggest(d):
        return max(int(n) for p in generate(30, seed=2, difficulty=d) for n in re.findall(r"\d+", p.meta["expression"]))
    assert biggest(6) > biggest(1)


def test_answers_and_intermediates_are_exact():
    for p in generate(40, seed=9, difficulty=5):
        expression = p.meta["expression"]
        assert p.prompt == f"Compute {expression}. Work one operation per step."
        assert p.id.startswith("arith-9-")
        # the intermediates are the chain's running values and end at the answer
        assert p.meta["intermediates"][-1] == int(p.answer)
        assert check_step(p, f"{expression} = {p.answer}") is True
        assert check_step(p, f"{expression} = {int(p.answer) + 1}") is False
        assert all(v >= 0 for v in p.meta["intermediates"])


@pytest.mark.parametrize("step", [
    "7 + 5 = 12",
    "First, (7 + 5) × 3 = 12 × 3 = 36.",
    "36 − 4 = 32.",
    "3 x 4 = 12 and 3x4=12",
    "$1,200 + 34 = 1,234$",
    "\\(12 \\times 3 = 36\\)",
    "- 12 * 3 = 36",
    "2. 12 \\cdot 3 = 36",
    "**12 * 3 = 36**",
    "10 / 4 = 2.5",
    "5 - 8 = -3",
])
def test_right_steps(step):
    assert check_step(None, step) is True


@pytest.mark.parametrize("step", [
    "7 + 5 = 13",
    "7 + 5 = 12, so 12 × 3 = 37.",
    "(7 + 5) * 3 = 12 * 3 = 35",
    "2 + 3 * 4 = 20",  # precedence matters
    "1,000 + 1 = 1,002",
])
def test_wrong_steps(step):
    assert check_step(None, step) is False


@pytest.mark.parametrize("step", ["We add the first two numbers.", "so x = 12", "Step 2 = 36", "The answer is 32.",
                                  "the answer is 4", "Step 2 is 36", "The sum of 13 and 3 is 16.", "so x is 12",
                                  "Step 1 is 13 + 3", "13 + 3 is 16 + 0"])
def test_steps_without_equations_cannot_be_judged(step):
    assert check_step(None, step) is None


def test_step_scorer_and_path_correctness():
    problem = generate(1, seed=0, difficulty=3)[0]
    values = problem.meta["intermediates"]
    right = [f"The value is {problem.meta['expression']} = {values[-1]}.", f"The answer is {problem.answer}."]
    wrong = ["7 + 5 = 13", "Let me think.", f"The answer is {problem.answer}."]
    scores = asyncio.run(arithmetic_step_scorer([problem, problem], [right, wrong]))
    assert scores == [[1.0, None], [0.0, None, None]]
    assert is_correct_path(problem, right)
    assert not is_correct_path(problem, wrong)
    assert not is_correct_path(problem, ["Let me think.", f"The answer is {problem.answer}."])  # nothing checked
    assert not is_correct_path(problem, ["2 + 2 = 4", f"The answer is {Fraction(problem.answer) + 1}."])


@pytest.mark.parametrize("step, holds", [
    ("So, 13 + 3 equals 4.", False),
    ("So, 13 + 3 equals 16.", True),
    ("13 + 3 is 16", True),
    ("13 + 3 is equal to 16.", True),
    ("5 * 3 makes 15", True),
    ("7 - 2 gives 6", False),
    ("$13 + 3$ is **16**.", True),
    ("(7 + 5) IS 12", True),
    ("7 + 5 = 12, and 12 * 3 is 37.", False),
])
def test_words_for_equals(step, holds):
    assert check_step(None, step) is holds


def test_prose_is_not_an_equation():
    assert equations("the answer is 4") == []
    assert equations("The answer is 4, since 2 + 2 is 4.") == [("2 + 2", "4", True)]


def _problem(expression, intermediates):
    return Problem(id="t", prompt=f"Compute {expression}.", answer=str(intermediates[-1]),
                   meta={"expression": expression, "intermediates": intermediates})


@pytest.mark.parametrize("expression, intermediates, step, expected", [
    # right steps toward the answer
    ("13 + 3", [16], "13 + 3 = 16", True),
    ("13 + 3", [16], "So, 13 + 3 equals 16.", True),
    ("7 - 2 + 2", [5, 7], "7 - 2 = 5", True),
    ("7 - 2 + 2", [5, 7], "5 + 2 = 7", True),  # an earlier intermediate as an operand
    ("(7 + 5) * 3", [12, 36], "(7 + 5) * 3 = 12 * 3 = 36", True),
    ("(7 + 5) * 3", [12, 36], "36 = 12 * 3", True),
    # right arithmetic, but irrelevant or leading away
    ("13 + 3", [16], "13 * 3 = 39", False),
    ("7 - 2 + 2", [5, 7], "2 + 2 = 4", False),
    ("7 - 2 + 2", [5, 7], "7 + 2 = 9", False),  # another route: conservatively off track
    ("13 + 3", [16], "9 + 7 = 16", False),  # the right value from numbers not in the problem
    ("7 - 2 + 2", [5, 7], "7 + 5 = 12, 5 + 2 = 7", False),  # every equation must be on track
    # wrong arithmetic
    ("13 + 3", [16], "So, 13 + 3 equals 4.", False),
    ("(7 + 5) * 3", [12, 36], "7 + 5 = 12, so 12 * 3 = 37", False),
    # nothing to judge
    ("13 + 3", [16], "the answer is 16", None),
    ("13 + 3", [16], "We add the numbers.", None),
])
def test_on_track(expression, intermediates, step, expected):
    assert on_track(_problem(expression, intermediates), step) is expected


def test_on_track_follows_generated_problems_and_needs_their_meta():
    for p in generate(20, seed=5, difficulty=3):
        assert on_track(p, f"{p.meta['expression']} = {p.answer}") is True
        assert on_track(p, f"{p.meta['expression']} = {int(p.answer) + 1}") is False
    with pytest.raises(ValueError):
        on_track(Problem(id="q", prompt="What is 2 + 2?", answer="4"), "2 + 2 = 4")


@pytest.mark.parametrize("prefix, step, expected", [
    ((), "3 + 25 = 28", True),
    ((), "3 + 25 + 11 - 7 = 32", True),
    ((), "3 + 25 = 28, and 28 + 11 = 39", True),  # 28 was derived earlier in the same step
    ((), "(3 + 25) + 11 = 28 + 11 = 39", True),
    ((), "39 = 28 + 11", False),  # 28 and 39 come from nowhere yet: the right side is the computing one
    (("3 + 25 = 28",), "39 = 28 + 11", True),
    (("3 + 25 = 28", "28 + 11 = 39"), "39 - 7 = 32", True),
    (("First add 3 and 25 to get 28.",), "28 + 11 = 39", True),  # a number stated in an earlier step's prose
    ((), "2 + 7 = 9", False),  # true, but 2 is in neither the problem nor an earlier step
    (("3 + 25 + 11 - 7 = 32",), "32 * 1 = 32", False),  # a no-op on an invented 1
    ((), "3 + 25 = 27", False),  # false arithmetic is false, grounded or not
    ((), "The answer is 32.", None),
])
def test_grounded_step_computes_only_with_stated_numbers(prefix, step, expected):
    problem = _problem("3 + 25 + 11 - 7", [28, 39, 32])
    assert grounded_step(problem, step, prefix) is expected


def test_the_plain_check_passes_what_grounding_catches():
    problem = _problem("3 + 25 + 11 - 7", [28, 39, 32])
    for step in ("2 + 7 = 9", "32 * 1 = 32"):
        assert check_step(problem, step) is True and grounded_step(problem, step) is False


def test_grounded_step_reads_the_prompt_without_an_expression():
    problem = Problem(id="w", prompt="Add 1,200 and 34, then double it.", answer="2468")
    assert grounded_step(problem, "1,200 + 34 = 1,234") is True
    assert grounded_step(problem, "1234 * 2 = 2468", ["1,200 + 34 = 1,234"]) is False  # "double": 2 unstated


@pytest.mark.parametrize("expression, prefix, step, expected", [
    # the right derivation, left to right and with the answer computed inside the answer step
    ("(4 - 3) * 2 + 17", ("4 - 3 = 1", "1 * 2 = 2", "2 + 17 = 19"), "The answer is 19.", True),
    ("(4 - 3) * 2 + 17", ("4 - 3 = 1", "1 * 2 = 2"), "So 2 + 17 = 19. The answer is 19.", True),
    # true, grounded steps that land on the answer while leaving 4 - 3 out (SmolLM2 at three operations)
    ("(4 - 3) * 2 + 17", ("4 * 2 = 8", "2 + 17 = 19"), "The answer is 19.", False),
    # a stated number that is also a result: both threes of 9 - 6 + 3 count
    ("(9 - 6 + 3) * 5", ("9 - 6 = 3", "3 + 3 = 6", "6 * 5 = 30"), "The answer is 30.", True),
    ("(9 - 6 + 3) * 5", (), "The answer is 30.", False),  # an answer stated bare: derived from nothing
    ("(9 - 6 + 3) * 5", ("9 - 6 = 3", "3 + 3 = 6", "6 * 5 = 30"), "The answer is 31.", False),
    # not an answer step: the grounded verdict
    ("(4 - 3) * 2 + 17", ("4 * 2 = 8",), "2 + 17 = 19", True),
    ("(4 - 3) * 2 + 17", (), "2 + 7 = 9", False),
    ("(4 - 3) * 2 + 17", (), "Let us begin.", None),
])
def test_derived_step_asks_the_answer_to_come_from_every_stated_number(expression, prefix, step, expected):
    problem = Problem(id="d", prompt=f"Compute {expression}.", answer=None, meta={"expression": expression})
    assert derived_step(problem, step, prefix) is expected


def test_every_reference_solution_is_derived():
    for difficulty in (1, 2, 3, 4):
        for problem in generate(100, seed=3, difficulty=difficulty):
            steps = problem.meta["steps"]
            assert derived_step(problem, f"The answer is {problem.answer}.", steps) is True, steps


@pytest.mark.parametrize("expression, prefix, step, expected", [
    # the no-ops SmolLM2-135M strings into three-operation paths: a 1 used twice, a spent 1 used again
    ("(3 - 2) * 2 * 3", ("3 - 2 = 1",), "1 * 1 = 1", False),
    ("(3 - 2) * 2 * 3", ("3 - 2 = 1",), "1 * 2 = 2", True),
    ("10 - 7 - 1 + 21", ("10 - 7 - 1 + 21 = 23",), "23 * 1 = 23", False),
    ("(5 - 1) * 2 + 15", ("5 - 1 = 4",), "2 * 2 = 4", False),  # the one 2 twice (on_track calls it right)
    # a number stated twice, or made again by a step, may be used twice
    ("(9 - 6 + 3) * 5", ("9 - 6 = 3",), "3 + 3 = 6", True),
    # a restatement uses nothing up, and a chain through a rewritten side holds
    ("15 + 6 - 1", ("15 + 6 = 21", "21 - 1 = 20"), "The answer is 21 - 1 = 20.", True),
    ("6 * 5 + 22", (), "6 * 5 + 22 = 6 * 5 + 22 = 30 + 22 = 52", True),
    ("3 + 25 + 11 - 7", ("First add 3 and 25 to get 28.",), "28 + 11 = 39", True),  # a number stated in prose
    # what derived_step says first: a false step, an underived answer, a step of prose
    ("(3 - 2) * 2 * 3", ("3 - 2 = 1",), "1 * 2 = 3", False),
    ("(4 - 3) * 2 + 17", ("4 * 2 = 8", "2 + 17 = 19"), "The answer is 19.", False),
    ("(3 - 2) * 2 * 3", (), "Let us begin.", None),
])
def test_counted_step_lets_no_equation_use_a_number_more_often_than_the_path_has_it(expression, prefix, step,
                                                                                     expected):
    problem = Problem(id="c", prompt=f"Compute {expression}.", answer=None, meta={"expression": expression})
    assert counted_step(problem, step, prefix) is expected


def test_every_reference_solution_is_counted_step_by_step():
    from treepref.verifiers.step_check import load_step_check

    assert load_step_check("arithmetic_counted") is counted_step
    for difficulty in (1, 2, 3, 4):
        for problem in generate(100, seed=3, difficulty=difficulty):
            steps = problem.meta["steps"]
            for i, step in enumerate(steps):
                assert counted_step(problem, step, steps[:i]) is True, (steps, i)
            assert counted_step(problem, f"The answer is {problem.answer}.", steps) is True, steps
