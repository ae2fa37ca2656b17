"""The code environment on the real tokenizer: the context ends on the model's own indentation token, steps
end at the boundary in token space, the function ends at a line back at column 0, and the reward is the
sandbox's verdict with the per-test results in ``info``."""

from __future__ import annotations

import asyncio

import pytest

from treepref.domains import build_problems
from treepref.envs import build_env


class Tok:
    """The policy's side an environment uses: the real tokenizer and chat template, no weights."""

    def __init__(self, model_dir):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)

    def encode(self, text):
        return self.tok.encode(text)

    def decode(self, ids):
        return self.tok.decode(list(ids))

    def chat_prompt(self, messages):
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def tok(model_dir):
    return Tok(model_dir)


@pytest.fixture(scope="module")
def problem():
    return build_problems("humaneval", count=1)[0][0]  # has_close_elements


def generated(env, state, tok, body):
    """``body`` as the model would write it after ``state``: the ids of the running text past the prompt."""
    full = tok.encode(state.text + body)
    assert full[:len(state.token_ids)] == list(state.token_ids), "the prompt's ids are not a prefix"
    return full[len(state.token_ids):]


async def play(env, state, pieces, ended=False):
    for i, piece in enumerate(pieces):
        tr = await env.step(state, piece.text, token_ids=piece.token_ids, ended=ended and i == len(pieces) - 1)
        state = tr.state
        if tr.terminated or tr.truncated:
            return tr
    return tr


def test_the_context_ends_on_the_models_indentation_token(tok, problem):
    env = build_env("code", {}, policy=tok)
    state = env.initial(problem)
    assert tok.decode(state.token_ids[-1:]) == "\n   "  # newline and indentation: one token, as the model writes it
    assert tok.decode(state.token_ids) == state.text and state.text.endswith('"""\n   ')
    assert "```python\nfrom typing import List" in state.text


@pytest.mark.parametrize("boundary, n_steps", [("statement", 2), ("blank_line", 2)])
def test_reference_solution_in_steps_passes(tok, problem, boundary, n_steps):
    env = build_env("code", {"boundary": boundary}, policy=tok)
    state = env.initial(problem)
    # the reference body after the three spaces of indentation the context already holds
    body = problem.meta["canonical_solution"][3:].rstrip() + "\n```\n\nThis checks every pair."
    ids = generated(env, state, tok, body)
    pieces = env.split(tok.decode(ids), ids)
    assert [i for p in pieces for i in p.token_ids] == ids  # nothing re-tokenised, nothing lost
    tr = asyncio.run(play(env, state, pieces))
    assert tr.terminated and tr.reward == 1.0 and tr.info["success"]
    assert tr.info["passed"] == tr.info["n_tests"] == 7 and all(t["ok"] for t in tr.info["tests"])
    assert tr.state.depth == n_steps
    assert tr.state.token_ids == state.token_ids + tuple(ids[:len(tr.state.token_ids) - len(state.token_ids)])


def test_statement_steps_and_the_overshoot_token(tok, problem):
    """A stop string at the next statement is completed by that statement's first token; the step ends
    before it, on the newline-and-indentation token."""
    env = build_env("code", {"boundary": "statement"}, policy=tok)
    state = env.initial(problem)
    ids = generated(env, state, tok, " n = len(numbers)\n    return False")
    tr = asyncio.run(env.step(state, tok.decode(ids), token_ids=ids))
    kept = tr.state.token_ids[len(state.token_ids):]
    assert tok.decode(kept) == " n = len(numbers)\n   " and not tr.terminated
    assert any(s in tok.decode(ids) for s in env.stop)  # the request would have stopped there


def test_wrong_solution_and_shares(tok, problem):
    wrong = "    return True\n```\n"
    for reward, value in (("pass", 0.0), ("share", 4 / 7)):
        env = build_env("code", {"reward": reward}, policy=tok)
        state = env.initial(problem)
        ids = generated(env, state, tok, wrong[3:])
        tr = asyncio.run(env.step(state, tok.decode(ids), token_ids=ids))
        assert tr.terminated and tr.reward == pytest.approx(value) and tr.info["success"] is False
        assert [t["ok"] for t in tr.info["tests"]] == [True, False, True, False, True, True, False]


def test_episode_ends_at_column_zero_and_truncates(tok, problem):
    env = build_env("code", {"max_depth": 2}, policy=tok)
    state = env.initial(problem)
    code, finished = env.solution(problem, "\n    x = 1\n\n    return x > 0\nprint(has_close_elements([], 1))\n")
    assert finished and code.endswith("    return x > 0\n") and "print" not in code
    assert env.solution(problem, "\n    x = 1\n        y = 2\n")[1] is False
    ids = generated(env, state, tok, " x = 1\n\n   ")
    tr = asyncio.run(env.step(state, tok.decode(ids), token_ids=ids))
    tr = asyncio.run(env.step(tr.state, tok.decode(ids), token_ids=ids))
    assert tr.truncated and not tr.terminated and tr.reward is None
    ended = asyncio.run(env.step(state, " return False", token_ids=generated(env, state, tok, " return False"), ended=True))
    assert ended.terminated and ended.reward == 0.0  # end of sequence ends the function; some tests fail
