"""The response environment: one action is a whole response, rewarded by the instruction score."""

from __future__ import annotations

import asyncio

from treepref.backends.scripted import ScriptedPolicy
from treepref.domains.instructions import Constraint, generate, score
from treepref.envs.check import check
from treepref.envs.response import ResponseEnv
from treepref.problems import Problem
from treepref.search.base import SearchContext
from treepref.tokens import PLAIN

NO_COMMA = Constraint("punctuation:no_comma")
WORDS = Constraint("length_constraints:number_words", {"relation": "at least", "num_words": 5})
PROBLEM = Problem("u1", "Describe rain. Do not use any commas. Answer with at least 5 words.",
                  meta={"constraints": [NO_COMMA.to_dict(), WORDS.to_dict()]})


def step(env, action, **kw):
    return asyncio.run(env.step(env.initial(PROBLEM), action, **kw))


def test_reward_is_the_share_of_constraints_and_success_needs_all():
    env = ResponseEnv()
    both = step(env, "Rain falls softly on the roof.")
    assert (both.reward, both.info["success"], both.terminated, both.truncated) == (1.0, True, True, False)
    one = step(env, "Rain, soft and grey, falls all day.")
    assert (one.reward, one.info["success"]) == (0.5, False)
    none = step(env, "Rain, wet.")
    assert (none.reward, none.info["success"]) == (0.0, False)


def test_a_problem_without_constraints_leaves_success_to_the_reward():
    async def half(problem, response):
        return 0.5

    env = ResponseEnv(verifier=half)
    tr = asyncio.run(env.step(env.initial(Problem("q", "Say hi.")), "Hi."))
    assert tr.reward == 0.5 and tr.info["success"] is None


def test_text_and_ids_extend_the_prompt():
    env = ResponseEnv(system="Be brief.")
    root = env.initial(PROBLEM)
    assert root.text == "<system>\nBe brief.\n<user>\n" + PROBLEM.prompt + "\n<assistant>\n"
    assert root.token_ids == tuple(PLAIN.encode(root.text)) and env.render(root) == root.token_ids
    assert env.messages(PROBLEM)[0] == {"role": "system", "content": "Be brief."}
    # given as text: encoded; the node's text is stripped, the context keeps the response as written
    tr = step(env, " Rain falls softly on the roof.\n")
    assert tr.state.steps == ("Rain falls softly on the roof.",)
    assert tr.state.text == root.text + " Rain falls softly on the roof.\n"
    assert PLAIN.decode(tr.state.token_ids) == tr.state.text
    # generated: its ids as sampled
    ids = tuple(PLAIN.encode("Rain falls softly on the roof."))
    tr = step(env, "Rain falls softly on the roof.", token_ids=ids, ended=True)
    assert tr.state.token_ids == root.token_ids + ids and tr.state.n_tokens == len(ids)
    assert env.stop == () and env.render_text(tr.state) == tr.state.text


def test_split_keeps_a_response_whole():
    env = ResponseEnv()
    ids = tuple(PLAIN.encode("One.\n\nTwo."))
    [piece] = env.split("One.\n\nTwo.", ids, (), -2.0)
    assert (piece.text, piece.token_ids, piece.logprob, piece.last) == ("One.\n\nTwo.", ids, -2.0, True)


def test_the_checker_passes_on_instruction_problems():
    report = check(ResponseEnv(), generate(5, seed=3), walks=4)
    assert report.ok, report.failures
    assert report.steps == 20 and report.episodes_ended == 20  # every response ends its episode


def test_reward_matches_the_instruction_score_on_generated_problems():
    env = ResponseEnv()
    response = "the garden was quiet this morning and the river ran slowly past the old mill"
    for p in generate(6, seed=1, n_constraints=3):
        tr = asyncio.run(env.step(env.initial(p), response))
        assert tr.reward == score(p, response)


def test_a_search_context_binds_the_policy_tokenizer():
    ctx = SearchContext(env=ResponseEnv(), policy=ScriptedPolicy({}))
    assert ctx.env.tokenizer is ctx.policy
