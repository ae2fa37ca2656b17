"""Label quality on built-in arithmetic: every step classified exactly, every pair counted."""

from __future__ import annotations

import pytest

from treepref.domains.arithmetic import make_problem
from treepref.extract.quality import BUCKETS, UNCHECKABLE, classify_step, pair_label_quality

# arith-0-0: "Compute (18 - 3) * 5 - 16."  steps 18 - 3 = 15, 15 * 5 = 75, 75 - 16 = 59; answer 59
P = make_problem(0, 0)
# arith-0-2: "Compute 15 * 4 + 9 - 13."  its first step is right arithmetic but off track for P
Q = make_problem(0, 2)
PROBLEMS = {P.id: P, Q.id: Q}
S1, S2, S3 = P.meta["steps"]


def test_the_problems_are_the_ones_the_tests_are_written_for():
    assert P.id == "arith-0-0" and P.answer == "59" and P.meta["intermediates"] == [15, 75, 59]
    assert (S1, S2, S3) == ("18 - 3 = 15", "15 * 5 = 75", "75 - 16 = 59")
    assert Q.id == "arith-0-2" and Q.meta["steps"][0] == "15 * 4 = 60"


def row(prefix, chosen, rejected, pid=P.id, delim="\n\n"):
    return {"problem_id": pid, "prefix_steps": list(prefix), "chosen": chosen + delim, "rejected": rejected + delim}


# -- step classes ---------------------------------------------------------------------------------------
def test_right_steps_are_steps_of_this_solution_or_the_reference_answer():
    assert classify_step(P, [], S1) == "right"
    assert classify_step(P, [S1], "Next, 15 × 5 = 75.") == "right"
    assert classify_step(P, [S1, S2, S3], "The answer is 59.") == "right"
    assert classify_step(P, [S1, S2], "75 - 16 = 59, so the answer is \\boxed{59}") == "right"


def test_wrong_steps_state_a_false_equation_or_another_answer():
    assert classify_step(P, [S1], "15 * 5 = 70") == "wrong"
    assert classify_step(P, [S1, S2, S3], "The answer is 58.") == "wrong"  # an answer line, wrong number
    # the right answer does not excuse a false equation in the same step
    assert classify_step(P, [S1, S2], "75 - 16 = 58, so the answer is 59.") == "wrong"
    # right arithmetic on the way to a wrong answer is still a wrong answer
    assert classify_step(P, [S1, S2], "75 - 16 = 59. The answer is 60.") == "wrong"


def test_off_steps_are_right_arithmetic_that_is_no_step_of_this_solution():
    assert classify_step(P, [], "18 + 3 = 21") == "off"  # this problem's numbers, the wrong operation
    assert classify_step(P, [], Q.meta["steps"][0]) == "off"  # another problem's right step
    assert classify_step(Q, [], Q.meta["steps"][0]) == "right"


def test_repeat_is_an_earlier_step_again_whitespace_aside():
    assert classify_step(P, [S1], "  18 - 3  =\n15 ") == "repeat"
    assert classify_step(P, [S1, S2, S3], S2) == "repeat"
    assert classify_step(P, [S1], S2) == "right"


def test_prose_has_neither_an_equation_nor_an_answer():
    assert classify_step(P, [], "First, work out the parentheses.") == "prose"
    assert classify_step(P, [S1], "Step 2 = next") == "prose"


def test_the_answer_reader_is_injectable():
    def reader(text):
        return text.split("RESULT>>")[1].strip() if "RESULT>>" in text else None

    assert classify_step(P, [S1, S2, S3], "RESULT>> 59", read_answer=reader) == "right"
    assert classify_step(P, [S1, S2, S3], "RESULT>> 59") == "prose"  # the default reader does not see it
    q = pair_label_quality([row([S1, S2, S3], "RESULT>> 59", "RESULT>> 58")], PROBLEMS, read_answer=reader)
    assert q["good"] == 1


# -- pair buckets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix, chosen, rejected, bucket", [
    ([S1], S2, "15 * 5 = 70", "good"),  # right over wrong
    ([], S1, "18 + 3 = 21", "good"),  # right over off track
    ([S1, S2, S3], "The answer is 59.", "The answer is 58.", "good"),  # answer lines
    ([S1], "15 * 5 = 70", S2, "inverted"),
    ([S1], "18 + 3 = 21", S2, "inverted"),  # off track chosen over right
    (["18 - 3 = 14"], "14 * 5 = 70", "14 * 5 = 72", "bad_prefix"),  # a wrong prefix step spoils the pair
    ([S1, S1], S2, "15 * 5 = 70", "bad_prefix"),  # a repeated prefix step
    (["Let us start."], S1, "18 - 3 = 16", "bad_prefix"),  # prose in the prefix is not right either
    (["18 + 3 = 21"], S1, "18 - 3 = 16", "bad_prefix"),  # an off-track prefix step
    ([S1], S2, "Now multiply by five.", "junk_rejected"),  # right over prose
    ([S1], S2, S1, "junk_rejected"),  # right over a repeat
    ([S1], S2, "5 * 15 = 75", "both_right"),
    ([S1], "15 * 5 = 70", "18 + 3 = 21", "both_wrong"),  # wrong and off: no right side
    ([S1], "15 * 5 = 70", "Now multiply.", "wrong_over_prose"),
    ([S1], "Now multiply.", S2, "prose_chosen"),
    ([S1], S1, "15 * 5 = 70", "prose_chosen"),  # a repeat chosen
])
def test_every_pair_lands_in_one_bucket(prefix, chosen, rejected, bucket):
    q = pair_label_quality([row(prefix, chosen, rejected)], PROBLEMS)
    assert q["pairs"] == 1 and q[bucket] == 1 and q[f"{bucket}_share"] == 1.0
    assert sum(q[b] for b in BUCKETS) == 1
    assert q["uncheckable"] == (1 if bucket in UNCHECKABLE else 0)


def test_shares_are_over_all_pairs_and_steps_are_counted_by_side():
    rows = [
        row([S1], S2, "15 * 5 = 70"),  # good
        row([S1], S2, "15 * 5 = 80"),  # good
        row([S1], "15 * 5 = 70", S2),  # inverted
        row(["18 - 3 = 14"], "14 * 5 = 70", "14 * 5 = 72"),  # bad prefix (its chosen: right arithmetic, off track)
        row([S1], S2, "Multiply next."),  # junk rejected
        row([], "Let us begin.", S1),  # prose chosen
        row([], S1, "18 + 3 = 21"),  # good
        row([], Q.meta["steps"][0], "15 * 4 = 64", pid=Q.id),  # good, on the other problem
    ]
    q = pair_label_quality(iter(rows), PROBLEMS)
    assert q["pairs"] == 8
    assert (q["good"], q["inverted"], q["bad_prefix"], q["junk_rejected"], q["prose_chosen"]) == (4, 1, 1, 1, 1)
    assert q["good_share"] == 0.5 and q["inverted_share"] == 0.125 and q["uncheckable_share"] == 0.125
    assert q["steps"]["chosen"] == {"right": 5, "wrong": 1, "off": 1, "repeat": 0, "prose": 1}
    assert q["steps"]["rejected"] == {"right": 2, "wrong": 4, "off": 1, "repeat": 0, "prose": 1}
    assert q["steps"]["prefix"] == {"right": 4, "wrong": 1, "off": 0, "repeat": 0, "prose": 0}


def test_conversational_layout():
    def msg(text):
        return [{"role": "assistant", "content": text + "\n\n"}]

    rows = [{"problem_id": P.id, "prefix_steps": [S1], "chosen": msg(S2), "rejected": msg("15 * 5 = 70")},
            {"problem_id": P.id, "prefix_steps": [S1, S2], "chosen": msg("75 - 16 = 58"), "rejected": msg(S3)}]
    q = pair_label_quality(rows, PROBLEMS)
    assert (q["pairs"], q["good"], q["inverted"]) == (2, 1, 1)


def test_another_delimiter_is_stripped():
    q = pair_label_quality([row([S1], S2, "15 * 5 = 70", delim="\nStep:")], PROBLEMS, delimiter="\nStep:")
    assert q["good"] == 1


def test_no_pairs_no_shares():
    q = pair_label_quality([], PROBLEMS)
    assert q["pairs"] == 0 and q["good_share"] is None and q["uncheckable_share"] is None


def test_a_row_whose_problem_is_missing_names_it():
    with pytest.raises(ValueError, match="arith-0-99") as err:
        pair_label_quality([row([S1], S2, "15 * 5 = 70", pid="arith-0-99")], PROBLEMS)
    assert "\n" not in str(err.value)


# -- the first error, ProcessBench's label ---------------------------------------------------------------
def test_first_error_is_the_first_wrong_or_off_track_step():
    from treepref.extract.quality import first_error

    assert first_error(P, [S1, S2, S3, "The answer is 59."]) == -1
    assert first_error(P, [S1, "15 * 5 = 70", "70 - 16 = 54", "The answer is 54."]) == 1  # false equation
    # off track at 2 ("15 * 4" is no step of this solution); the prose before it is no error
    assert first_error(P, ["So we compute.", S1, "15 * 4 = 60", "The answer is 44."]) == 2
    assert first_error(P, [S1, S2, S3, "The answer is 58."]) == 3  # only the answer is wrong
    assert first_error(P, []) == -1
