"""Text is tokens: every prompt a search sends is its parent's ids plus the ids the policy generated.

On the real SmolLM2 tokenizer a text ending in "\\n\\n" encodes to one token (1116) that the model never
writes at a step boundary (it writes 198, 198); these tests fail if any path re-tokenises joined text.
"""

from __future__ import annotations

import pytest

from treepref.backends.base import Sampling
from treepref.domains.arithmetic import make_problem, worked_examples
from treepref.envs.reasoning import ReasoningEnv
from treepref.search.base import SearchContext
from treepref.search.mcts import MCTSConfig, mcts
from treepref.tokens import split_completion, step_ids

from sampled import until_present


NL, NLNL = 198, 1116  # SmolLM2: "\n" and the merged "\n\n"


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    class Tok:
        def encode(self, text):
            return tok.encode(text, add_special_tokens=False)

        def decode(self, ids):
            return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return Tok()


def test_joined_text_retokenises_the_boundary(tokenizer):
    """The fact everything here guards against (if it stops holding, the tests below prove less)."""
    running = tokenizer.encode("13 + 3 = 16\n\nThe answer is 16.")
    assert tokenizer.encode("13 + 3 = 16\n\n")[-1] == NLNL
    assert NLNL not in running and running.count(NL) == 2


def test_a_completion_splits_into_steps_in_token_space(tokenizer):
    ids = tokenizer.encode("13 + 3 = 16\n\n16 * 2 = 32\n\nThe answer is 32.")
    lps = [-0.5] * len(ids)
    pieces = split_completion(tokenizer.decode(ids), ids, lps, sum(lps), "\n\n", tokenizer.decode)
    assert [p.text for p in pieces] == ["13 + 3 = 16\n\n", "16 * 2 = 32\n\n", "The answer is 32."]
    assert [t for p in pieces for t in p.token_ids] == ids  # nothing dropped, nothing re-encoded
    assert pieces[0].token_ids[-2:] == (NL, NL) and [p.last for p in pieces] == [False, False, True]
    assert sum(p.logprob for p in pieces) == pytest.approx(sum(lps))


def test_a_token_that_runs_past_the_delimiter_stays_with_its_step(tokenizer):
    ids = tokenizer.encode("a\n\n\nb")  # 'a', '\n\n', '\n', 'b'
    pieces = split_completion("a\n\n\nb", ids, (), -4.0, "\n\n", tokenizer.decode)
    assert [t for p in pieces for t in p.token_ids] == ids and len(pieces) == 2
    assert pieces[1].text.strip() == "b"


def test_a_given_step_gets_the_ids_of_running_text(tokenizer):
    ids = step_ids(tokenizer, "13 + 3 = 16\n\n")
    assert ids[-2:] == [NL, NL] and tokenizer.decode(ids) == "13 + 3 = 16\n\n"


def test_env_children_extend_their_parents_ids(tokenizer, aio):
    env = ReasoningEnv(tokenizer=tokenizer)
    problem = make_problem(0, 0, 1)
    root = env.initial(problem)
    assert env.render(root) == tuple(tokenizer.encode(env.prompt(problem)))
    child = aio(env.step(root, "13 + 3 = 16\n\n", token_ids=[33, 35, NL, NL])).state
    assert env.render(child) == env.render(root) + (33, 35, NL, NL)
    given = aio(env.step(root, "13 + 3 = 16")).state  # not generated: encoded as running text
    assert env.render(given)[-2:] == (NL, NL)


def _search_with(policy, aio, problem):
    """A small MCTS on one problem, recording every prompt the backend received."""
    env = ReasoningEnv(template=policy.chat_prompt, tokenizer=policy, max_depth=3, few_shot=worked_examples(1))
    ctx = SearchContext(env=env, policy=policy, sampling=Sampling(temperature=1.0, max_tokens=24),
                        rollout_max_tokens=40)
    policy.stats.log = []
    try:
        tree = aio(mcts(problem, ctx, MCTSConfig(simulations=3, k=2, n_rollouts=1)))
        return tree, [p for prompts, _ in policy.stats.log for p in prompts]
    finally:
        policy.stats.log = None


def _boundary(tree) -> bool:
    """Whether a step of the tree ends in the step boundary as the model writes it: two tokens."""
    return any(tree.token_ids[n][-2:] == [NL, NL] for n in range(1, len(tree)))


def _check_tree(tree, sent):
    by_ids = {tuple(tree.prompt_ids(n)): n for n in range(len(tree))}
    assert sent and all(not isinstance(p, str) for p in sent)  # searches send ids, never text
    for p in sent:
        assert tuple(p) in by_ids  # every prompt is exactly some node's ids
    for n in range(1, len(tree)):
        assert tree.prompt_ids(n) == tree.prompt_ids(tree.parent[n]) + tree.token_ids[n]
        assert tree.n_tokens[n] == len(tree.token_ids[n])


def _check_searches(policy, aio):
    """One search, and one more problem at a time (at most four) while no step ended in the boundary: every
    search must be token-exact, and one must hold a boundary the model wrote (or the check proves little).
    Sampling is random on vLLM-CPU (it ignores seeds): three simulations' steps may all end otherwise."""
    searched = []

    def more(i):
        searched.append(_search_with(policy, aio, make_problem(0, 1 + i, 1)))
        return searched

    until_present(more, lambda s: [] if any(_boundary(tree) for tree, _ in s) else [
        "a step ending in the two tokens 198, 198"], 4, "searched problems")
    for tree, sent in searched:
        _check_tree(tree, sent)
    # the model writes the boundary as two tokens, and the tree keeps them so
    assert any(_boundary(tree) for tree, _ in searched)


@pytest.mark.slow
def test_hf_search_sends_token_exact_prompts(model_dir, aio):
    from treepref.backends.hf import HFPolicy

    policy = HFPolicy(model_dir)
    try:
        _check_searches(policy, aio)
    finally:
        policy.close()


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_search_sends_token_exact_prompts(vllm_policy, aio):
    _check_searches(vllm_policy, aio)
