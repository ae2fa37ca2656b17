"""The reasoning environment: rendering (text and token ids), when a path ends, and how it is rewarded."""

from __future__ import annotations

import asyncio

from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.problems import Problem


async def exact(problem, answer):
    return float(answer == problem.answer)


def step(env, state, text, ended=False, token_ids=None):
    return asyncio.run(env.step(state, text, token_ids=token_ids, ended=ended))


def test_render_appends_steps_with_the_delimiter():
    env = ReasoningEnv(template=plain_template, verifier=exact, system=None)
    s = env.initial(Problem("x", "Compute 2 + 3.", "5"))
    root = env.render(s)
    s = step(env, s, "2 + 3 = 5\n\n").state
    assert env.render_text(s) == "<user>\nCompute 2 + 3.\n<assistant>\n2 + 3 = 5\n\n"
    assert s.steps == ("2 + 3 = 5",) and s.n_tokens == 5  # "2 ", "+ ", "3 ", "= ", "5\n\n"
    assert env.render(s)[:len(root)] == root  # a child's ids extend its parent's


def test_generated_ids_are_kept_as_they_are():
    env = ReasoningEnv(template=plain_template, verifier=exact, system=None)
    s = env.initial(Problem("x", "Compute 2 + 3.", "5"))
    child = step(env, s, "2 + 3 = 5\n\n", token_ids=[7, 8, 9]).state
    assert env.render(child) == env.render(s) + (7, 8, 9) and child.n_tokens == 3


def test_answers_end_the_path_and_are_verified():
    env = ReasoningEnv(template=plain_template, verifier=exact)
    s = env.initial(Problem("x", "Compute 13 + 3.", "16"))
    right = step(env, s, "The answer is 16.")
    wrong = step(env, s, "So the answer is 4.")
    boxed = step(env, s, "Thus \\boxed{16}")
    assert (right.terminated, right.reward) == (True, 1.0)
    assert (wrong.terminated, wrong.reward) == (True, 0.0)
    assert (boxed.terminated, boxed.reward) == (True, 1.0)
    going = step(env, s, "13 + 3 = 16")
    assert not going.terminated and going.reward is None and not going.truncated


def test_end_of_sequence_reads_the_last_number_unless_disabled():
    env = ReasoningEnv(template=plain_template, verifier=exact)
    s = env.initial(Problem("x", "Compute 13 + 3.", "16"))
    assert step(env, s, "Therefore, 13 + 3 = 16.", ended=True).reward == 1.0
    assert step(env, s, "I am not sure.", ended=True).reward == 0.0
    strict = ReasoningEnv(template=plain_template, verifier=exact, last_number_fallback=False)
    t = step(strict, s, "Therefore, 13 + 3 = 16.", ended=True)
    assert t.terminated and t.reward == 0.0


def test_budgets_truncate_without_reward():
    env = ReasoningEnv(template=plain_template, verifier=exact, max_depth=2, max_tokens=100)
    s = env.initial(Problem("x", "q", "1"))
    first = step(env, s, "a b c")
    assert not first.truncated
    second = step(env, first.state, "d e")
    assert second.truncated and not second.terminated and second.reward is None
    long = ReasoningEnv(template=plain_template, verifier=exact, max_tokens=4)
    assert step(long, s, "one two three four five").truncated


def test_a_step_check_ends_a_path_at_its_first_false_step():
    """With ``step_check`` a step stating false arithmetic ends the episode unrewarded, so the right answer
    written after it (a small model copies answers past its own slips) is never reached and earns nothing."""
    problem = Problem("x", "Compute 12 + 5 + 1.", "18")
    env = ReasoningEnv(template=plain_template, verifier=exact, step_check="arithmetic")
    s = env.initial(problem)
    false = step(env, s, "12 + 5 = 16")
    assert (false.terminated, false.truncated, false.reward) == (True, False, 0.0)
    assert false.info["step_check"] is False
    true = step(env, s, "12 + 5 = 17")
    assert not true.terminated and true.reward is None and true.info["step_check"] is True
    prose = step(env, true.state, "Now add one.")  # nothing to check: goes on, and says so
    assert not prose.terminated and prose.info["step_check"] is None
    assert step(env, prose.state, "The answer is 18.").reward == 1.0
    # a final line with false arithmetic fails even with the right number in it
    assert step(env, true.state, "17 + 1 = 19, so the answer is 18.").reward == 0.0
    # without the check the same slip goes on and the copied answer counts as solved
    plain = ReasoningEnv(template=plain_template, verifier=exact)
    slipped = step(plain, plain.initial(problem), "12 + 5 = 16")
    assert not slipped.terminated
    assert step(plain, slipped.state, "The answer is 18.").reward == 1.0


def test_a_grounded_check_also_ends_a_path_on_an_invented_number():
    """``arithmetic_grounded``: a true equation on a number neither the problem nor an earlier step states
    ends the path (a lucky route to the right answer: 2 + 7 = 9, 9 * 4 = 36, 36 - 4 = 32)."""
    problem = Problem("x", "Compute 3 + 25 + 11 - 7.", "32")
    grounded = ReasoningEnv(template=plain_template, verifier=exact, step_check="arithmetic_grounded")
    plain = ReasoningEnv(template=plain_template, verifier=exact, step_check="arithmetic")
    assert step(grounded, grounded.initial(problem), "2 + 7 = 9").info.get("step_check") is False
    assert not step(plain, plain.initial(problem), "2 + 7 = 9").terminated
    s = grounded.initial(problem)
    for text in ("3 + 25 = 28", "28 + 11 = 39"):  # each uses the problem's numbers or the step before
        t = step(grounded, s, text)
        assert not t.terminated
        s = t.state
    assert step(grounded, s, "39 - 7 = 32, so the answer is 32.").reward == 1.0


def false_if_seven_or_repeated(problem, text, prefix):
    return False if "7" in text or text in prefix else None


def test_a_step_check_may_be_a_users_function_and_a_bad_name_is_one_error():
    import pytest

    from treepref.envs import EnvError, build_env

    env = ReasoningEnv(template=plain_template, verifier=exact,
                       step_check="test_reasoning_env:false_if_seven_or_repeated")
    s = env.initial(Problem("x", "q", "1"))
    assert step(env, s, "I have 7 apples").reward == 0.0
    six = step(env, s, "I have 6")
    assert not six.terminated
    assert step(env, six.state, "I have 6").info["step_check"] is False  # it saw the steps before
    with pytest.raises(ValueError, match=r"step_check: unknown step check 'algebra' \(known: arithmetic"):
        ReasoningEnv(step_check="algebra")
    with pytest.raises(EnvError, match=r"r\.yaml: environment 'reasoning': step_check: step check 'nowhere:f': "
                                       r"no module named 'nowhere'"):
        build_env("reasoning", {"step_check": "nowhere:f"}, source="r.yaml")
