"""Held-out evaluation: Wilson intervals, majority vote, reranking, and sampling solutions on the scripted policy."""

from __future__ import annotations

import asyncio
import math

import pytest

from treepref.backends.scripted import EOS, ScriptedPolicy
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.problems import Problem
from treepref.tokens import PLAIN
from treepref.train.evaluate import (Solution, aggregate, by_score, evaluate, first_error_f1, majority, pair_auc,
                                     policy_report, predicted_first_error, prm_step_scores, rerank_report,
                                     sample_solutions, verifier_scores, vote_weights, weighted_majority, wilson)


def sol(answer, correct=False, tokens=(1,), mean_logprob=-1.0) -> Solution:
    return Solution(text="", token_ids=list(tokens), steps_ids=[list(tokens)], steps=[""], mean_logprob=mean_logprob,
                    answer=answer, correct=correct, finished=answer is not None, prompt_ids=[7, 8])


# -- Wilson -----------------------------------------------------------------------------------------------
def test_wilson_matches_the_hand_computed_interval():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.716738, half-width 0.226581
    lo, hi = wilson(8, 10, z=1.96)
    assert lo == pytest.approx(0.490157, abs=1e-5) and hi == pytest.approx(0.943319, abs=1e-5)
    # 0 of 10: the lower end is 0 and the upper is z^2 / (n + z^2) = 3.8416 / 13.8416
    lo, hi = wilson(0, 10, z=1.96)
    assert lo == 0.0 and hi == pytest.approx(3.8416 / 13.8416, abs=1e-9)
    lo, hi = wilson(10, 10, z=1.96)
    assert hi == 1.0 and lo == pytest.approx(10 / 13.8416, abs=1e-9)
    assert wilson(8, 10) == pytest.approx((0.490157, 0.943319), abs=1e-4)  # the default z is the exact 95% quantile
    assert wilson(0, 0) == (0.0, 1.0)


# -- picking --------------------------------------------------------------------------------------------
def test_majority_counts_equal_values_once_and_breaks_ties_by_first_stated():
    # 3 and 4 have two votes each ("4.0" is 4); 3 was stated first (sample 1), so it wins
    votes = [sol(None), sol("3"), sol("4", True), sol("4.0", True), sol("3")]
    assert majority(votes) is votes[1]
    # a clear winner: 12 (two votes, "12.0" counts as 12) over 5
    votes = [sol("5"), sol("12", True), sol("12.0", True)]
    assert majority(votes) is votes[1]
    # no answers at all: the first sample; nothing at all: None
    votes = [sol(None), sol(None)]
    assert majority(votes) is votes[0]
    assert majority([]) is None


def test_weighted_majority_sums_each_answers_weight():
    votes = [sol("9"), sol("9.0"), sol("4", True), sol(None), sol("9")]
    # by count 9 wins 3 to 1; by weight 4 has 0.9 against 9's 0.2 + 0.3 + 0.3 = 0.8 (the answerless 5.0 does not vote)
    assert majority(votes) is votes[0]
    assert weighted_majority(votes, [0.2, 0.3, 0.9, 5.0, 0.3]) is votes[2]
    # 9 outweighs (0.2 + 0.35 + 0.3 = 0.85): its heaviest solution is returned, the earliest of equal weights
    assert weighted_majority(votes, [0.2, 0.35, 0.8, 0.0, 0.3]) is votes[1]
    assert weighted_majority(votes, [0.3, 0.3, 0.8, 0.0, 0.3]) is votes[0]
    # equal weights are majority; a tie of totals goes to the answer stated first; nan counts 0
    assert weighted_majority(votes, [1.0] * 5) is majority(votes)
    assert weighted_majority(votes[1:3], [0.5, 0.5]) is votes[1]
    assert weighted_majority(votes[:3], [float("nan"), 0.1, 0.2]) is votes[2]
    # no answers: the heaviest solution; nothing: None
    none = [sol(None), sol(None)]
    assert weighted_majority(none, [0.1, 0.4]) is none[1]
    assert weighted_majority([], []) is None
    with pytest.raises(ValueError, match=">= 0"):
        weighted_majority(votes[:2], [0.1, -0.2])
    with pytest.raises(ValueError, match="2 solutions but 1 weights"):
        weighted_majority(votes[:2], [0.1])


def test_by_score_picks_the_highest_earliest_on_ties_and_nan_lowest():
    s = [sol("1"), sol("2"), sol("3"), sol("4")]
    assert by_score(s, [0.1, 0.9, 0.9, float("nan")]) is s[1]
    assert by_score(s[:2], [float("nan"), -5.0]) is s[1]
    assert by_score(s[:2], [-math.inf, -math.inf]) is s[0]
    with pytest.raises(ValueError, match="2 solutions but 1 scores"):
        by_score(s[:2], [1.0])


def test_rerank_report_by_hand():
    problems = [Problem("a", "?", "1"), Problem("b", "?", "2"), Problem("c", "?", "3")]
    sols = [
        [sol("9"), sol("1", True), sol("9")],  # majority wrong (9), the score finds the right one
        [sol("2", True), sol("2", True), sol("5")],  # everything right but the low-scored third
        [sol("7"), sol("8"), sol("8")],  # nothing right
    ]
    scores = {"s": [[0.0, 1.0, 0.5], [0.2, 0.1, 0.9], [3.0, 2.0, 1.0]]}
    r = rerank_report(problems, sols, scores)
    assert r["oracle"]["correct"] == 2 and r["first"]["correct"] == 1
    assert r["majority"]["correct"] == 1  # only problem b
    assert r["s"]["correct"] == 1  # a right, b picks the wrong "5" (0.9)
    assert r["mean_sample"] == {**r["mean_sample"], "correct": 3, "n": 9}
    assert r["s"]["ci95"] == [round(x, 4) for x in wilson(1, 3)]
    # pairs (right, wrong) within a problem: a: 1.0 > 0.0 and 0.5 (2 wins); b: 0.2 < 0.9, 0.1 < 0.9 (0 wins)
    assert r["s"]["pair_auc"] == 0.5
    assert pair_auc(sols, scores["s"]) == 0.5
    with pytest.raises(ValueError, match="3 problems but 2"):
        rerank_report(problems, sols[:2])
    # a weighted vote: a's "1" (1.0) outweighs "9" (0.0 + 0.5); b's "2" (0.5 + 0.5) outweighs "5" (0.9), which
    # by_score would pick; c has nothing right
    r = rerank_report(problems, sols, scores, votes={"w": [[0.0, 1.0, 0.5], [0.5, 0.5, 0.9], [1.0, 1.0, 1.0]]})
    assert r["w_vote"]["correct"] == 2 and "pair_auc" not in r["w_vote"]
    with pytest.raises(ValueError, match="votes 'w': 1 rows for 3 problems"):
        rerank_report(problems, sols, votes={"w": [[1.0, 1.0, 1.0]]})


def test_vote_weights_by_kind_of_score():
    assert vote_weights("logit", [[0.0, math.log(3), -math.inf, -800.0]]) == [[0.5, pytest.approx(0.75), 0.0, 0.0]]
    assert vote_weights("logprob", [[math.log(0.25), -math.inf]]) == [[pytest.approx(0.25), 0.0]]
    assert vote_weights("probability", [[0.7, -math.inf]]) == [[0.7, 0.0]]
    with pytest.raises(ValueError, match="use probability, logit or logprob"):
        vote_weights("advantage", [[0.1]])


def test_policy_report_greedy_and_samples():
    greedy = [[sol("1", True)], [sol("2")]]
    samples = [[sol("1", True), sol("1", True)], [sol("3"), sol("2", True)]]
    r = policy_report(greedy, samples)
    assert r["greedy"]["correct"] == 1 and r["greedy"]["n"] == 2
    assert (r["samples"]["correct"], r["samples"]["n"], r["samples"]["per_problem"]) == (3, 4, 2)
    assert r["any_of_samples"]["correct"] == 2


def test_scores_use_the_generated_ids_and_aggregate_per_step():
    class FakeVerifier:
        def __init__(self):
            self.seen = None

        def sequence(self, prompt_ids, steps_ids, question):  # reads the policy's prompt, as one trained on it
            return [*prompt_ids, *(t for s in steps_ids for t in s)]

        def score_ids(self, seqs):
            self.seen = seqs
            return [float(len(s)) for s in seqs]

    class FakePRM:
        def row(self, prompt_ids, steps_ids, question):  # reads the policy's prompt, as a PRM trained on it
            return tuple(prompt_ids), tuple(map(tuple, steps_ids))

        def score_many(self, rows):
            return [[0.1 * len(step) for step in steps] for _, steps in rows]

    a = Solution("", [1, 2, 3], [[1, 2], [3]], ["x", "y"], -1.0, "1", True, True, [7, 8])
    empty = Solution("", [], [], [], math.nan, None, False, False, [7, 8])
    v = FakeVerifier()
    assert verifier_scores(v, [[a, empty, a]]) == [[5.0, -math.inf, 5.0]]
    assert v.seen == [[7, 8, 1, 2, 3]]  # prompt ids + solution ids, once; the empty one is never sent
    steps = prm_step_scores(FakePRM(), [[a, empty]])
    assert steps == [[[pytest.approx(0.2), pytest.approx(0.1)], []]]
    assert aggregate(steps, "min") == [[pytest.approx(0.1), -math.inf]]
    assert aggregate(steps, "last") == [[pytest.approx(0.1), -math.inf]]
    assert aggregate(steps, "sum") == [[pytest.approx(0.3), -math.inf]]  # a PAV's progress from the prompt
    with pytest.raises(ValueError, match="unknown aggregator"):
        aggregate(steps, "median")


# -- sampling on the scripted policy ----------------------------------------------------------------------
RIGHT, WRONG = "The answer is 2.", "The answer is 3."
SCRIPT = {
    (): [("1 + 1 = 2", -2.5), "1 + 1 = 3"],
    ("1 + 1 = 2",): [(RIGHT, -2.0)],  # no EOS: the model goes on after its answer, the solution stops there
    ("1 + 1 = 2", RIGHT): ["Next question." + EOS],
    ("1 + 1 = 3",): [WRONG + EOS],
}


def test_sample_solutions_end_to_end_on_the_scripted_policy():
    policy = ScriptedPolicy(SCRIPT)
    env = ReasoningEnv(template=plain_template, system=None, max_depth=6)
    problem = Problem("p", "What is 1 + 1?", answer="2")
    out = asyncio.run(sample_solutions(policy, env, [problem], n=4, max_tokens=64))
    (call_prompts, params), = policy.calls
    assert params.n == 4 and params.stop == () and params.max_tokens == 64  # one whole-solution request
    assert call_prompts == [list(env.initial(problem).token_ids)]
    sols = out[0]
    assert [s.correct for s in sols] == [True, False, True, False]  # candidate i at the first step, cycling
    assert [s.answer for s in sols] == ["2", "3", "2", "3"]
    right, wrong = sols[0], sols[1]
    assert right.steps == ["1 + 1 = 2", RIGHT] and right.finished
    # ids as generated, cut into steps (delimiter included), with what followed the answer dropped
    assert right.steps_ids == [PLAIN.encode("1 + 1 = 2\n\n"), PLAIN.encode(RIGHT + "\n\n")]
    assert right.token_ids == sum(right.steps_ids, [])
    assert right.generated_tokens == right.n_tokens + len(PLAIN.encode("Next question."))
    assert right.prompt_ids == list(env.initial(problem).token_ids)
    # mean log-prob of the kept tokens: (-2.5 - 2.0) / (5 + 4) tokens
    assert right.mean_logprob == pytest.approx(-4.5 / 9)
    assert wrong.steps == ["1 + 1 = 3", WRONG] and not wrong.correct
    r = rerank_report([problem], out, {"logprob": [[s.mean_logprob for s in sols]]})
    assert r["oracle"]["correct"] == 1 and r["logprob"]["correct"] == 1  # -0.5 beats the wrong one's -1.0


def test_a_solution_cut_by_max_tokens_is_unfinished():
    policy = ScriptedPolicy({(): ["one two three four five six"]})
    env = ReasoningEnv(template=plain_template, system=None)
    (sols,) = asyncio.run(sample_solutions(policy, env, [Problem("p", "?", answer="2")], n=1, max_tokens=3))
    assert sols[0].n_tokens == 3 and not sols[0].finished and sols[0].answer is None and not sols[0].correct


def test_evaluate_on_a_given_policy_reports_greedy_and_reranking():
    policy = ScriptedPolicy(SCRIPT)
    env = ReasoningEnv(template=plain_template, system=None, max_depth=6)
    problems = [Problem("p", "What is 1 + 1?", answer="2"), Problem("q", "What is 1 + 1 again?", answer="2")]
    r = asyncio.run(evaluate(None, problems=problems, n=4, policy=policy, env=env))
    assert r["policy"]["greedy"]["correct"] == 2  # temperature 0 on the script: candidate 0, right
    assert r["policy"]["samples"]["correct"] == 4 and r["policy"]["samples"]["n"] == 8
    assert set(r["rerank"]) == {"first", "oracle", "mean_sample", "majority", "logprob", "logprob_vote"}
    assert r["rerank"]["majority"]["correct"] == 2  # 2-2 ties: "2" was stated first
    # the right samples' mean log-prob is -0.5, the wrong ones' -1.0: "2" weighs 2 e^-0.5 against 2 e^-1
    assert r["rerank"]["logprob_vote"]["correct"] == 2
    assert r["generated_tokens"] > 0


# -- ProcessBench-style first-error score ---------------------------------------------------------------
def test_first_error_f1_is_the_harmonic_mean_of_the_two_accuracies():
    # A PRM's step scores on five solutions, threshold 0.5: first steps below it at 1, -1, 0, 2, -1
    scores = [[0.9, 0.2, 0.1], [0.8, 0.7], [0.4, 0.9], [0.6, 0.6, 0.3], [0.5, 0.5]]
    predicted = [predicted_first_error(s) for s in scores]
    assert predicted == [1, -1, 0, 2, -1]
    truth = [1, 0, -1, 2, -1]  # two errors found exactly (1 and 2), one missed (0); clean: one of two passed
    got = first_error_f1(predicted, truth)
    assert (got["n_error"], got["n_correct"]) == (3, 2)
    assert got["error_accuracy"] == pytest.approx(2 / 3) and got["correct_accuracy"] == pytest.approx(1 / 2)
    assert got["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # 4/7
    assert first_error_f1([-1, -1], [-1, -1])["f1"] is None  # no erroneous solution: no F1
    assert first_error_f1([0], [1])["error_accuracy"] == 0.0  # flagging too early is a miss
    with pytest.raises(ValueError, match="2 predictions for 1 solutions"):
        first_error_f1([0, 1], [1])


def test_a_fitted_threshold_finds_first_errors_a_head_that_scores_everything_low_hides_at_half():
    from treepref.train.evaluate import first_error_at, fit_threshold

    # a PRM trained on mostly wrong steps: every score under 0.5. Truth: an error at step 1, none, one at 0
    cases = [([0.3, 0.1], 1), ([0.35, 0.32], -1), ([0.2], 0)]
    at_half = first_error_at(cases, 0.5)  # every first step flagged: one error found by luck, nothing passed
    assert (at_half["error_accuracy"], at_half["correct_accuracy"], at_half["f1"]) == (0.5, 0.0, 0.0)
    # between the sorted scores 0.1, 0.2, 0.3, 0.32, 0.35: 0.15 misses the step-0 error (F1 2/3), 0.25 gets all
    assert fit_threshold(cases) == pytest.approx(0.25)
    assert first_error_at(cases, fit_threshold(cases))["f1"] == 1.0
    assert first_error_at(cases, 0.15)["f1"] == pytest.approx(2 / 3)


def test_first_error_report_grades_a_prms_step_scores_against_the_oracle():
    from treepref.domains.arithmetic import make_problem
    from treepref.train.evaluate import first_error_report

    p = make_problem(0, 0)  # (18 - 3) * 5 - 16: 18 - 3 = 15, 15 * 5 = 75, 75 - 16 = 59
    right = ["18 - 3 = 15", "15 * 5 = 75", "75 - 16 = 59", "The answer is 59."]
    slip = ["18 - 3 = 15", "15 * 5 = 70", "70 - 16 = 54", "The answer is 54."]

    def s(steps, answer, ids):
        return Solution("", [ids], [[ids]] * len(steps), steps, -1.0, answer, answer == "59", True)

    sols = [[s(right, "59", 1), s(slip, "54", 2), s(slip, "54", 2), s(right[:2], None, 3)]]
    # P(good) per step: the right one passed whole; the slip flagged one step late; the repeat and the
    # unfinished one are not graded
    scores = [[[0.9, 0.8, 0.7, 0.9], [0.9, 0.6, 0.2, 0.1], [0.9, 0.6, 0.2, 0.1], [0.1, 0.1]]]
    got = first_error_report([p], sols, scores)
    assert (got["n_error"], got["n_correct"], got["error_accuracy"], got["correct_accuracy"]) == (1, 1, 0.0, 1.0)
    assert got["f1"] == 0.0
    scores[0][1] = [0.9, 0.4, 0.2, 0.1]  # now the slip is found where it is
    assert first_error_report([p], sols, scores)["f1"] == 1.0
    other = Problem(id="x", prompt="Q?", answer="1")
    assert first_error_report([other], [[s(["x"], "1", 1)]], [[[0.9]]]) is None  # no oracle outside arithmetic
