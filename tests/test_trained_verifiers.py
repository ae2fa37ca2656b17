"""Loading back the verifiers ``treepref train`` saves: tiny random Llama heads built from a config, saved the way
the trainer saves them (weights, the SmolLM2 tokenizer, ``treepref-train.json``), checked against direct
forwards of the same model on ids built by hand."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import torch

from treepref.problems import Problem
from treepref.tokens import step_ids
from treepref.verifiers.trained import TrainedPRM, TrainedVerifier, load_trained

P1 = Problem(id="a", prompt="What is 12 + 7?", answer="19")
P2 = Problem(id="b", prompt="Compute 3 * (4 + 1).", answer="15")
S1 = ["12 + 7 = 19.", "So the total is 19.", "The answer is 19."]
S2 = ["4 + 1 = 5, and 3 * 5 = 15.", "The answer is 15."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _save(folder, model, tok, method):
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    if method is not None:
        (folder / "treepref-train.json").write_text(json.dumps({"method": method, "steps": 1}))
    return folder


def _config(tok, **kw):
    from transformers import LlamaConfig

    # A large init range so different read positions give clearly different scores.
    return LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, initializer_range=0.2, **kw)


@pytest.fixture(scope="module")
def verifier_dir(tok, tmp_path_factory):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_config(tok, num_labels=1)).eval()
    return _save(tmp_path_factory.mktemp("verifier") / "model", model, tok, "verifier")


@pytest.fixture(scope="module")
def prm_dir(tok, tmp_path_factory):
    from transformers import LlamaForTokenClassification

    torch.manual_seed(1)
    model = LlamaForTokenClassification(_config(tok, num_labels=2)).eval()
    return _save(tmp_path_factory.mktemp("prm") / "model", model, tok, "prm")


@pytest.fixture(scope="module")
def verifier(verifier_dir):
    return TrainedVerifier(verifier_dir, batch_size=4)


@pytest.fixture(scope="module")
def prm(prm_dir):
    return TrainedPRM(prm_dir, batch_size=4)


def _chat_ids(tok, question):
    """The default prompt, built another way: the template as text, then encoded."""
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True)
    return tok.encode(text)


def _nested(rows, expected, tol=1e-5):
    assert [len(r) for r in rows] == [len(r) for r in expected]
    assert [x for r in rows for x in r] == pytest.approx([x for r in expected for x in r], rel=1e-4, abs=tol)


def _forward(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


# -- pairwise verifier ------------------------------------------------------------------------------
def test_verifier_score_ids_is_the_last_token_logit(verifier, tok):
    seq = _chat_ids(tok, P1.question) + step_ids(tok, S1[0] + "\n\n")
    assert seq[-2:] == [198, 198]  # the delimiter as a model writes it
    (got,) = verifier.score_ids([seq])
    assert got == pytest.approx(_forward(verifier.model, seq)[0].item(), abs=1e-5)
    # Hand-check the read position: the head's per-token logit at the last token (no padding here).
    with torch.inference_mode():
        hidden = verifier.model.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
        per_token = verifier.model.score(hidden)[:, 0]
    assert got == pytest.approx(per_token[-1].item(), abs=1e-5)
    assert abs(got - per_token[-2].item()) > 1e-3  # the check can tell positions apart
    assert verifier.score_ids([]) == []


def test_verifier_right_padding_and_order(verifier, tok):
    short = _chat_ids(tok, P1.question)[:12] + [7684, 601, 30, 198, 198]
    long = _chat_ids(tok, P2.question) + step_ids(tok, S2[0] + "\n\n") + step_ids(tok, S2[1] + "\n\n")
    alone = verifier.score_ids([short])[0], verifier.score_ids([long])[0]
    together = verifier.score_ids([long, short, long])  # one batch, short row right-padded
    assert together == pytest.approx([alone[1], alone[0], alone[1]], abs=1e-5)
    many = verifier.score_ids([short, long] * 5)  # several batches of 4, sorted by length, order restored
    assert many == pytest.approx(list(alone) * 5, abs=1e-5)


def test_verifier_refuses_rows_it_would_misread(verifier):
    with pytest.raises(ValueError, match="pad id"):
        verifier.score_ids([[5, 6, verifier.pad_id]])
    with pytest.raises(ValueError, match="empty"):
        verifier.score_ids([[5, 6], []])


def test_verifier_text_path_ids_and_scores(verifier, tok):
    seen = []

    class Recording(TrainedVerifier):
        def score_ids(self, sequences):
            seen.extend(map(list, sequences))
            return super().score_ids(sequences)

    rec = Recording(verifier.folder)
    out = asyncio.run(rec([P1, P2, P1], [S1, S2, []]))
    assert [len(r) for r in out] == [3, 2, 0]
    by_hand = []
    for p, steps in ((P1, S1), (P2, S2)):
        ids = _chat_ids(tok, p.question)
        for s in steps:
            ids = ids + step_ids(tok, s + "\n\n")
            by_hand.append(ids)
    assert seen == by_hand
    logits = verifier.score_ids(by_hand)
    assert out[0] + out[1] == pytest.approx([1 / (1 + torch.exp(torch.tensor(-x)).item()) for x in logits],
                                            abs=1e-6)
    assert all(0.0 < x < 1.0 for r in out for x in r)


def test_verifier_uses_render(verifier_dir, tok):
    calls = []
    prompt = [1, 4093, 198, 1780, 314]

    def render(problem):
        calls.append(problem.id)
        return tuple(prompt)

    v = TrainedVerifier(verifier_dir, render=render)
    out = asyncio.run(v([P2], [S2]))
    assert calls == ["b"]
    first, second = (step_ids(tok, s + "\n\n") for s in S2)
    hand = [prompt + first, prompt + first + second]
    expected = [1 / (1 + torch.exp(-torch.tensor(x)).item()) for x in v.score_ids(hand)]
    assert out[0] == pytest.approx(expected, abs=1e-6)


# -- stepwise PRM -----------------------------------------------------------------------------------
def test_prm_score_ids_reads_each_steps_last_token(prm, tok):
    prompt = _chat_ids(tok, P1.question)
    steps = [step_ids(tok, s + "\n\n") for s in S1]
    got = prm.score_ids(prompt, steps)
    ids = prompt + [t for s in steps for t in s]
    logits = _forward(prm.model, ids)
    ends, at = [], len(prompt)
    for s in steps:  # step k ends at len(prompt) + l_1 + ... + l_k - 1
        at += len(s)
        ends.append(at - 1)
    assert all(ids[e] == 198 for e in ends)  # each step's last token is the second "\n" of its delimiter
    expected = [logits[e].softmax(-1)[1].item() for e in ends]
    assert got == pytest.approx(expected, abs=1e-5)
    off_by_one = [logits[e - 1].softmax(-1)[1].item() for e in ends]
    assert max(abs(a - b) for a, b in zip(got, off_by_one)) > 1e-3  # the check can tell positions apart
    assert prm.score_ids(prompt, []) == []


def test_prm_batching_padding_and_order(prm, tok):
    rows = [(_chat_ids(tok, P1.question), [step_ids(tok, s + "\n\n") for s in S1]),
            ([1, 2, 3], [[7684, 198, 198]]),
            (_chat_ids(tok, P2.question), []),
            (_chat_ids(tok, P2.question), [step_ids(tok, s + "\n\n") for s in S2])]
    alone = [prm.score_ids(p, s) for p, s in rows]
    assert alone[2] == []
    _nested(prm.score_many(rows), alone)
    _nested(prm.score_many(rows * 3), alone * 3)
    with pytest.raises(ValueError, match="step 1 has no token ids"):
        prm.score_many([([1, 2], [[5], []])])


def test_prm_text_path(prm, prm_dir, tok):
    out = asyncio.run(prm([P1, P2, P2], [S1, S2, []]))
    hand = [prm.score_ids(_chat_ids(tok, p.question), [step_ids(tok, s + "\n\n") for s in steps])
            for p, steps in ((P1, S1), (P2, S2))]
    _nested(out, hand + [[]], 1e-6)
    rendered = TrainedPRM(prm_dir, render=lambda p: [1, 2, 3, 4])
    got = asyncio.run(rendered([P2], [S2]))[0]
    assert got == pytest.approx(prm.score_ids([1, 2, 3, 4], [step_ids(tok, s + "\n\n") for s in S2]), abs=1e-6)
    with pytest.raises(ValueError, match="2 problems but 1"):
        asyncio.run(prm([P1, P2], [S1]))


# -- loading ----------------------------------------------------------------------------------------
def test_load_trained_dispatch_and_errors(verifier_dir, prm_dir, tok, tmp_path):
    assert type(load_trained(verifier_dir)) is TrainedVerifier
    assert type(load_trained(prm_dir, batch_size=2)) is TrainedPRM
    assert type(load_trained(prm_dir.parent)) is TrainedPRM  # the run's output folder: OUT/model inside

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((verifier_dir / name).read_bytes())
    with pytest.raises(ValueError, match="treepref-train.json") as err:
        load_trained(bare)
    assert str(bare) in str(err.value)

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "treepref-train.json").write_text(json.dumps({"method": "dpo"}))
    with pytest.raises(ValueError, match="'dpo'") as err:
        load_trained(policy)
    assert str(policy) in str(err.value)

    with pytest.raises(ValueError, match="method 'prm'"):
        TrainedVerifier(prm_dir)  # the wrong class for the folder


def test_node_scores_inside_a_search_read_the_trees_own_ids(verifier, prm, tok):
    """``score_node(tree, node)`` (the search hook) scores the ids the tree recorded, nothing re-encoded."""
    import asyncio

    from treepref.tree import ROOT, Tree

    tree = Tree("p", "What is 2 + 3?", "5")
    tree.token_ids[ROOT] = _chat_ids(tok, "What is 2 + 3?")
    a = tree.add(ROOT, "2 + 3 = 5", token_ids=tok.encode("2 + 3 = 5") + [198, 198])
    b = tree.add(a, "The answer is 5.", token_ids=tok.encode("The answer is 5."), terminated=True)
    got_v = asyncio.run(verifier.score_node(tree, b))
    assert got_v == pytest.approx(1 / (1 + math.exp(-verifier.score_ids([tree.prompt_ids(b)])[0])), abs=1e-6)
    got_p = asyncio.run(prm.score_node(tree, b))
    assert got_p == pytest.approx(prm.score_ids(tree.token_ids[ROOT], [tree.token_ids[a], tree.token_ids[b]])[-1],
                                  abs=1e-6)
    assert asyncio.run(prm.score_node(tree, a)) == pytest.approx(
        prm.score_ids(tree.token_ids[ROOT], [tree.token_ids[a]])[0], abs=1e-6)


def test_trained_scorers_as_search_evaluators(verifier_dir, prm_dir, verifier, prm, tok):
    """``evaluator: {kind: prm, model: F, aggregate: A}`` is A over the PRM's step scores of the node's path
    (the tree's ids), and ``{kind: verifier, model: F}`` the verifier's score of the node."""
    from treepref.envs.base import State
    from treepref.search.evaluators import evaluate, parse
    from treepref.tree import ROOT, Tree

    tree = Tree("p", "What is 2 + 3?", "5")
    tree.token_ids[ROOT] = _chat_ids(tok, "What is 2 + 3?")
    a = tree.add(ROOT, "2 + 3 = 5", token_ids=tok.encode("2 + 3 = 5") + [198, 198])
    b = tree.add(a, "So it is 5.", token_ids=tok.encode("So it is 5.") + [198, 198])
    states = {ROOT: State(Problem("p", "What is 2 + 3?", "5"))}
    steps = prm.score_ids(tree.token_ids[ROOT], [tree.token_ids[a], tree.token_ids[b]])
    for aggregate, want in (("min", min(steps)), ("last", steps[-1]), ("product", steps[0] * steps[1])):
        spec = parse({"kind": "prm", "model": str(prm_dir), "aggregate": aggregate})
        [[(node, value)]] = asyncio.run(evaluate(spec, tree, states, [b], ctx=None))
        assert node == b and value == pytest.approx(want, abs=1e-6)
    assert tree.scores[b]["prm"] == pytest.approx(steps[0] * steps[1], abs=1e-6)
    [[(_, v)]] = asyncio.run(evaluate(parse({"kind": "verifier", "model": str(verifier_dir)}), tree, states, [b], None))
    assert v == pytest.approx(asyncio.run(verifier.score_node(tree, b)), abs=1e-6)
    with pytest.raises(ValueError, match="holds a trained prm, not a verifier"):
        asyncio.run(evaluate(parse({"kind": "verifier", "model": str(prm_dir)}), tree, states, [b], None))


def test_a_prm_trained_on_the_question_reads_its_own_prompt_everywhere(prm_dir, prm, tok, tmp_path):
    """A folder whose summary says ``input: question`` reads its own short prompt before the steps wherever it
    scores: a search's evaluator, ``score_node`` and best-of-N reranking, whatever prompt ids the policy saw."""
    import shutil

    from treepref.envs.base import State
    from treepref.search.evaluators import evaluate, parse
    from treepref.train.evaluate import Solution, prm_step_scores
    from treepref.tree import ROOT, Tree

    folder = shutil.copytree(prm_dir, tmp_path / "question-prm")
    (folder / "treepref-train.json").write_text(json.dumps({"method": "prm", "config": {"input": "question"}}))
    own = TrainedPRM(folder, batch_size=4)
    q = "What is 2 + 3?"
    policy_prompt = _chat_ids(tok, "Example: 1 + 1 = 2. The answer is 2.\n\n" + q)
    tree = Tree("p", q, "5")
    tree.token_ids[ROOT] = policy_prompt
    a = tree.add(ROOT, "2 + 3 = 5", token_ids=tok.encode("2 + 3 = 5") + [198, 198])
    b = tree.add(a, "So it is 5.", token_ids=tok.encode("So it is 5.") + [198, 198])
    steps = [tree.token_ids[a], tree.token_ids[b]]
    want = prm.score_ids(_chat_ids(tok, q), steps)  # the same weights, after the question alone
    assert want != pytest.approx(prm.score_ids(policy_prompt, steps), abs=1e-4)  # the prompt matters
    assert asyncio.run(own.score_node(tree, b)) == pytest.approx(want[-1], abs=1e-6)
    spec = parse({"kind": "prm", "model": str(folder), "aggregate": "min"})
    [[(_, value)]] = asyncio.run(evaluate(spec, tree, {ROOT: State(Problem("p", q, "5"))}, [b], ctx=None))
    assert value == pytest.approx(min(want), abs=1e-6)
    sol = Solution("", steps[0] + steps[1], steps, ["2 + 3 = 5", "So it is 5."], -1.0, None, False, False,
                   prompt_ids=policy_prompt, question=q)
    assert prm_step_scores(own, [[sol]]) == [[pytest.approx(want, abs=1e-6)]]
    assert prm_step_scores(prm, [[sol]]) == [[pytest.approx(prm.score_ids(policy_prompt, steps), abs=1e-6)]]


class TokPolicy:
    """A scripted policy on SmolLM2's real tokenizer (so a trained scorer can read its ids): from the root it
    writes two steps, below them the answer."""

    def __init__(self, tok):
        self.tok = tok

    def chat_prompt(self, messages):
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text):
        return self.tok.encode(text)

    def decode(self, ids):
        return self.tok.decode(list(ids))

    def count_tokens(self, text):
        return len(self.tok.encode(text))

    async def generate(self, prompts, params):
        from treepref.backends.base import Completion

        out = []
        for p in prompts:
            text = self.decode(p) if not isinstance(p, str) else p
            body = text.rpartition("<|im_start|>assistant\n")[2]
            options = ["2 + 3 = 5.\n\n", "2 + 3 = 6.\n\n"] if not body else ["The answer is 5."]
            row = []
            for i in range(params.n):
                step = options[i % len(options)]
                ids = tuple(self.tok.encode(step))
                row.append(Completion(step, ids, -1.0, "stop", "\n\n" if step.endswith("\n\n") else None,
                                      tuple([-1.0 / len(ids)] * len(ids))))
            out.append(row)
        return out


@pytest.mark.parametrize("kind", ["prm", "verifier"])
def test_mcts_backs_up_a_trained_scorers_values(kind, prm_dir, verifier_dir, prm, verifier, tok):
    """MCTS with ``evaluator: {kind: prm | verifier}``: each valued node's Q is the scorer's number, computed
    here by hand from the scorer on the tree's own ids (PRM: the min over the path's step scores)."""
    from treepref.envs.reasoning import ReasoningEnv
    from treepref.search import build_config
    from treepref.search.base import SearchContext
    from treepref.search.mcts import mcts

    async def exact(problem, answer):
        return 1.0 if answer == "5" else 0.0

    policy = TokPolicy(tok)
    ctx = SearchContext(env=ReasoningEnv(template=policy.chat_prompt, verifier=exact, system=None, max_depth=3),
                        policy=policy)
    folder = prm_dir if kind == "prm" else verifier_dir
    spec = {"kind": kind, "model": str(folder), **({"aggregate": "min"} if kind == "prm" else {})}
    cfg = build_config("mcts", {"simulations": 3, "k": 2, "c_puct": 10.0, "evaluator": spec})
    tree = asyncio.run(mcts(Problem("p", "What is 2 + 3?", "5"), ctx, cfg))
    steps = tree.children(0)
    assert sorted(tree.text[c] for c in steps) == ["2 + 3 = 5.", "2 + 3 = 6."]
    for c in steps:  # each step was valued once, when MCTS reached it
        assert tree.visits[c] == 1
        if kind == "prm":
            want = min(prm.score_ids(tree.token_ids[0], [tree.token_ids[c]]))
        else:
            want = asyncio.run(verifier.score_node(tree, c))
        assert tree.value(c) == pytest.approx(want, abs=1e-5) and tree.scores[c][kind] == pytest.approx(want, abs=1e-5)
    root_value = tree.scores[0][kind]  # the root valued first (the PRM: no step judged, its default 0.5)
    assert tree.value(0) == pytest.approx((root_value + sum(tree.value(c) for c in steps)) / 3, abs=1e-5)


def test_concurrent_prm_evaluations_are_one_forward_batch(prm_dir, prm, tok):
    """Evaluations that arrive in one event-loop tick (simulations and trees in flight) go to the PRM as
    one ``score_many`` call, with each caller getting its own rows back."""
    from treepref.envs.base import State
    from treepref.search import evaluators
    from treepref.tree import ROOT, Tree

    tree = Tree("p", "What is 2 + 3?", "5")
    tree.token_ids[ROOT] = _chat_ids(tok, "What is 2 + 3?")
    a = tree.add(ROOT, "2 + 3 = 5", token_ids=tok.encode("2 + 3 = 5") + [198, 198])
    b = tree.add(ROOT, "2 + 3 = 6", token_ids=tok.encode("2 + 3 = 6") + [198, 198])
    states = {ROOT: State(Problem("p", "What is 2 + 3?", "5"))}
    spec = evaluators.parse({"kind": "prm", "model": str(prm_dir), "aggregate": "last"})
    scorer = evaluators._trained(str(prm_dir), "prm")
    calls, inner = [], scorer.score_many
    scorer.score_many = lambda rows: calls.append(len(rows)) or inner(rows)
    try:
        async def both():
            return await asyncio.gather(*(evaluators.evaluate(spec, tree, states, [n], None) for n in (a, b)))

        [[[(_, va)]], [[(_, vb)]]] = asyncio.run(both())
    finally:
        scorer.score_many = inner
    assert calls == [2]
    assert va == pytest.approx(prm.score_ids(tree.token_ids[ROOT], [tree.token_ids[a]])[-1], abs=1e-6)
    assert vb == pytest.approx(prm.score_ids(tree.token_ids[ROOT], [tree.token_ids[b]])[-1], abs=1e-6)


class WholePolicy(TokPolicy):
    """Whole solutions on SmolLM2's tokenizer, cycling through two right ones and two wrong ones."""

    SOLUTIONS = ["2 + 3 = 5.\n\nThe answer is 5.", "2 + 3 = 6.\n\nThe answer is 6.", "3 + 2 = 5.\n\nThe answer is 5.",
                 "The answer is 6."]

    async def generate(self, prompts, params):
        from treepref.backends.base import Completion

        def one(text):
            ids = tuple(self.tok.encode(text))
            return Completion(text, ids, -1.0, "stop", None, tuple([-1.0 / len(ids)] * len(ids)))

        return [[one(self.SOLUTIONS[i % 4]) for i in range(params.n)] for _ in prompts]


def test_evaluate_reports_each_scorers_weighted_vote(verifier_dir, prm_dir, tok):
    """``evaluate`` with a trained verifier and PRM: each gets a weighted vote beside its pick, the verifier's logits
    through the logistic and the PRM's P(good) as they are, on the solutions it sampled."""
    from treepref.envs.reasoning import ReasoningEnv
    from treepref.train.evaluate import evaluate, prm_step_scores, verifier_scores, vote_weights, weighted_majority

    async def exact(problem, answer):
        return 1.0 if answer == "5" else 0.0

    policy = WholePolicy(tok)
    env = ReasoningEnv(template=policy.chat_prompt, verifier=exact, system=None, max_depth=3)
    problems = [Problem("p", "What is 2 + 3?", "5"), Problem("q", "What is 3 + 2?", "5")]
    r = asyncio.run(evaluate(None, problems=problems, n=4, policy=policy, env=env, verifier=str(verifier_dir),
                             prm=str(prm_dir), greedy=False, keep_solutions=True))
    rerank, samples = r["rerank"], r["solutions"]["samples"]
    assert {"verifier_vote", "prm_min_vote", "prm_last_vote", "logprob_vote"} <= set(rerank)
    assert [s.answer for s in samples[0]] == ["5", "6", "5", "6"] and rerank["oracle"]["correct"] == 2
    logits = verifier_scores(load_trained(str(verifier_dir)), samples)
    steps = prm_step_scores(load_trained(str(prm_dir)), samples)
    for name, weights in {"verifier": vote_weights("logit", logits),
                          "prm_min": [[min(v) for v in sols] for sols in steps]}.items():
        picks = [weighted_majority(s, w) for s, w in zip(samples, weights)]
        assert rerank[f"{name}_vote"]["correct"] == sum(p.correct for p in picks)
