"""The Q-value-model loop for agents (configs/agent-q.yaml -> configs/train-q-value.yaml -> configs/q-value.yaml):
step-level DPO on an agent's step pairs, the trained policy read as a Q-value model (the ``dpo_q`` evaluator:
β·(log π_θ − log π_ref) of an action's ids given its context's), and ``q_guided`` acting by it: k actions a step,
the best taken, every sampled one kept with its score. A scripted shopper and ``tutor.save_byte_model`` (a
byte-level tokenizer and a 2-layer Llama) stand in for SmolLM2, so nothing here is slow."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math

import pytest

import tutor
from treepref.backends.base import Sampling
from treepref.backends.scripted import ScriptedPolicy
from treepref.envs.shop import ShopEnv, load_goals
from treepref.search import build_config, get_search
from treepref.search.base import SearchContext
from treepref.tree import ROOT

G0 = load_goals(1)[0]  # shop-000: waterproof + zip pockets rain jacket, size s, under $80; target B0M3XG
QUERY, MUG = "search[waterproof zip pockets rain jacket]", "search[ceramic coffee mug]"
ITEM = (QUERY, "click[b0m3xg]")
PLAN = {  # actions so far -> the actions the shopper writes next, in the order its samples cycle through them
    (): [QUERY, MUG],
    (QUERY,): ["click[b0m3xg]"],
    ITEM: ["click[s]", "click[m]"],
    (*ITEM, "click[s]"): ["click[buy now]"],  # the goal's size: reward 1
    (*ITEM, "click[m]"): ["click[buy now]"],  # the wrong size: reward 3/4 (attributes and price match)
    (MUG,): ["click[b0a1b2]"],  # no such item: an invalid click, the page stays
}


def shop_script(steps, plan=PLAN):
    """The next actions after the transcript's ``Action:`` lines (written with the space a model writes)."""
    done = tuple(a for a in (s.removeprefix("Action:").strip() for s in steps if s.startswith("Action:")) if a)
    return [" " + a if isinstance(a, str) else (" " + a[0], a[1]) for a in plan.get(done, [])]


class ShopTutor(ScriptedPolicy):
    """The scripted shopper as a backend (``model.backend: shop-tutor``), in its ``model`` folder's tokenizer."""

    def __init__(self, model: str | None = None, **options) -> None:
        super().__init__(shop_script, delimiter="\n", tokenizer=tutor.FolderTokenizer(model))


def shop_context(policy, **env):
    return SearchContext(env=ShopEnv(template=policy.chat_prompt, demos=0, **env), policy=policy)


def run_episode(policy, options, problem=G0, **env):
    cfg = build_config("q_guided", options, "test")
    return asyncio.run(get_search("q_guided")(problem, shop_context(policy, **env), cfg))


def actions(tree, nodes):
    return [tree.text[n] for n in nodes]


TABLE = {QUERY: 0.25, MUG: 0.5, "click[b0m3xg]": 0.0, "click[s]": -1.0, "click[m]": 2.0, "click[buy now]": 0.0,
         "click[b0a1b2]": 0.0}


async def table_q(tree, node):
    """A hand-made Q: the table's value of the action (named in tests as ``test_q_value:table_q``)."""
    return TABLE[tree.text[node]]


def query_first_q(tree, node):
    """A plain (not async) scorer: the jacket search over everything, everything else alike."""
    return 1.0 if tree.text[node] == QUERY else 0.0


# -- acting ------------------------------------------------------------------------------------------------
def test_the_highest_q_is_taken_and_every_sampled_action_keeps_its_score():
    """Q ranks the mug search over the jacket search (0.5 > 0.25): the agent takes it although the jacket is the
    goal, and on the mug's results page it clicks an item that is not there, where the depth budget (2) ends it."""
    tree = run_episode(ScriptedPolicy(shop_script, delimiter="\n"), {"k": 2, "scorer": "test_q_value:table_q"},
                       max_depth=2)
    first = tree.children(ROOT)
    assert actions(tree, first) == [QUERY, MUG]
    assert [tree.scores[c]["q"] for c in first] == [0.25, 0.5]
    ep = tree.meta["episode"]
    assert actions(tree, ep["actions"]) == [MUG, "click[b0a1b2]"]
    assert ep["ended"] and not ep["terminated"] and tree.truncated[ep["last"]]  # cut at max_depth 2
    assert (ep["reward"], ep["outcome"], ep["success"]) == (None, 0.0, False)
    assert tree.children(first[0]) == []  # the road not taken is not walked
    assert all("q" in tree.scores[n] for n in range(1, len(tree)))


def test_q_beats_the_reward_it_cannot_see_and_the_episode_ends_at_buy():
    """Once the jacket is searched, the table prefers size m (2.0) to s (-1.0): the agent buys the wrong size,
    reward 3/4, although the tree holds s with its score beside it."""
    plan = {**PLAN, (): [QUERY]}  # the jacket search alone at first (the table would take the mug's)
    tree = run_episode(ScriptedPolicy(lambda s: shop_script(s, plan), delimiter="\n"),
                       {"k": 2, "scorer": "test_q_value:table_q"})
    ep = tree.meta["episode"]
    assert actions(tree, ep["actions"]) == [QUERY, "click[b0m3xg]", "click[m]", "click[buy now]"]
    size_s, size_m = tree.children(ep["actions"][1])
    assert (tree.text[size_s], tree.scores[size_s]["q"], tree.scores[size_m]["q"]) == ("click[s]", -1.0, 2.0)
    assert ep["terminated"] and tree.terminated[ep["last"]] and tree.children(ep["last"]) == []
    assert (ep["reward"], ep["outcome"], ep["success"]) == (0.75, 0.75, False)
    # the outcome is backed up along the chosen path only: the trees export values
    assert [tree.visits[n] for n in ep["actions"]] == [1, 1, 1, 1] and tree.visits[size_s] == 0
    assert tree.value(ep["actions"][0]) == 0.75
    assert tree.samples[ep["actions"][1]] == 2  # two samples of one action: merged, one node


def test_ties_take_the_first_sample_so_none_is_the_policy_alone():
    """``scorer: none`` scores every action 0: the first sample is taken at each step (the bench's baseline); a
    constant evaluator and a plain function that ties everything but the first action do the same, and the
    policy's log-prob picks its likelier action."""
    for options, q in (({"k": 2}, 0.0), ({"k": 2, "scorer": "none"}, 0.0),
                       ({"k": 2, "scorer": {"kind": "constant", "value": 0.5}}, 0.5),
                       ({"k": 2, "scorer": "test_q_value:query_first_q"}, None)):
        tree = run_episode(ScriptedPolicy(shop_script, delimiter="\n"), options)
        ep = tree.meta["episode"]
        assert actions(tree, ep["actions"]) == [QUERY, "click[b0m3xg]", "click[s]", "click[buy now]"], options
        assert (ep["reward"], ep["success"]) == (1.0, True)
        scores = [tree.scores[n]["q"] for n in range(1, len(tree))]
        assert len(scores) == 6 and set(scores) == ({1.0, 0.0} if q is None else {q})
        assert q is not None or [tree.scores[c]["q"] for c in tree.children(ROOT)] == [1.0, 0.0]
    plan = {**PLAN, (): [QUERY], ITEM: [("click[s]", -3.0), ("click[m]", -0.5)]}  # (action, its log-prob)
    tree = run_episode(ScriptedPolicy(lambda s: shop_script(s, plan), delimiter="\n"), {"k": 2, "scorer": "logprob"})
    item = tree.meta["episode"]["actions"][1]
    assert [tree.scores[c]["q"] for c in tree.children(item)] == pytest.approx([-3.0, -0.5])
    assert tree.text[tree.meta["episode"]["actions"][2]] == "click[m]"


LONG = "search[" + "waterproof " * 30 + "jacket]"  # more tokens than the step's budget: cut off mid-action


async def long_first_q(tree, node):
    """Ranks the long search above everything (a Q-value model may like an action the policy never finished)."""
    return 1.0 if tree.text[node].startswith("search[waterproof waterproof") else 0.0


def test_an_action_cut_off_is_taken_only_when_every_sample_was():
    """The long search runs out of tokens before its ``]`` and would end the episode unacted: the agent takes
    the whole jacket search although the scorer ranks the cut one higher, and buys; with nothing but the cut
    one to choose from, it takes that and the episode ends there, truncated."""
    plan = {**PLAN, (): [LONG, QUERY]}
    policy = ScriptedPolicy(lambda s: shop_script(s, plan), delimiter="\n")
    ctx = dataclasses.replace(shop_context(policy), sampling=Sampling(max_tokens=24))
    cfg = build_config("q_guided", {"k": 2, "scorer": "test_q_value:long_first_q"}, "test")
    tree = asyncio.run(get_search("q_guided")(G0, ctx, cfg))
    cut, whole = tree.children(ROOT)
    assert tree.info[cut].get("cut_off") and not tree.info[whole].get("cut_off")
    assert (tree.scores[cut]["q"], tree.scores[whole]["q"]) == (1.0, 0.0)
    ep = tree.meta["episode"]
    assert actions(tree, ep["actions"]) == [QUERY, "click[b0m3xg]", "click[s]", "click[buy now]"]
    assert ep["success"] and tree.meta["stats"]["cut_off"] == 1
    plan[()] = [LONG]
    tree = asyncio.run(get_search("q_guided")(G0, ctx, cfg))
    ep = tree.meta["episode"]
    assert len(ep["actions"]) == 1 and tree.info[ep["last"]]["cut_off"] and tree.truncated[ep["last"]]
    assert (ep["ended"], ep["terminated"], ep["success"]) == (True, False, False)


def test_max_steps_stops_an_unfinished_episode():
    tree = run_episode(ScriptedPolicy(shop_script, delimiter="\n"), {"k": 2, "max_steps": 2, "truncated_reward": 0.1})
    ep = tree.meta["episode"]
    assert actions(tree, ep["actions"]) == [QUERY, "click[b0m3xg]"]
    assert (ep["ended"], ep["reward"], ep["outcome"], ep["success"]) == (False, None, 0.1, False)
    assert tree.value(ep["actions"][0]) == pytest.approx(0.1) and tree.meta["stats"] == {
        "steps": 2, "distinct_actions": 3, "cut_off": 0}


@pytest.mark.parametrize("scorer, message", [
    ("nosuch_module:q", "q-value.yaml: search.options.scorer: function 'nosuch_module:q': no module named "
                        "'nosuch_module'"),
    ("test_q_value:no_such_q", "q-value.yaml: search.options.scorer: function 'test_q_value:no_such_q': module "
                               "'test_q_value' has no attribute 'no_such_q'"),
    ("best", "q-value.yaml: search 'q_guided': QGuidedConfig.scorer: 'best' is neither none, logprob, an evaluator "
             "kind (rollouts, constant, prm, pav, steps, verifier, judge, self_eval, mix, advantage, dpo_q) nor "
             "'module:function'"),
    (3, "q-value.yaml: search 'q_guided': QGuidedConfig.scorer must be none, logprob, an evaluator spec or "
        "'module:function', got 3"),
    ({"kind": "dpo_q"}, "q-value.yaml: search 'q_guided': QGuidedConfig.scorer: kind 'dpo_q' needs 'model'"),
    ({"kind": "dpo_q", "model": "/no/such/folder"}, "q-value.yaml: search 'q_guided': QGuidedConfig.scorer.model: "
                                                    "no folder '/no/such/folder' (a policy written by treepref "
                                                    "train, method dpo)"),
    ({"kind": "rollouts", "n": 2}, "q-value.yaml: search 'q_guided': QGuidedConfig.scorer: kind 'rollouts' plays "
                                   "the episode out and would read the reward of an action before taking it; use "
                                   "a scorer of the action itself (dpo_q, prm, ...)"),
])
def test_a_bad_scorer_is_one_line_naming_the_file_and_option(scorer, message):
    with pytest.raises(ValueError) as err:
        build_config("q_guided", {"scorer": scorer}, "q-value.yaml")
    assert str(err.value) == message


def test_a_dpo_q_folder_must_hold_a_policy_with_its_reference(tmp_path):
    from treepref.search.evaluators import parse

    prm = tmp_path / "prm"
    prm.mkdir()
    (prm / "treepref-train.json").write_text(json.dumps({"method": "prm"}))
    with pytest.raises(ValueError, match=f"^evaluator.model: {prm} holds a trained prm, not a policy "
                                         r"\(dpo, step_apo, tpo\)$"):
        parse({"kind": "dpo_q", "model": str(prm)})
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match=f"^evaluator.reference: {bare} names no base model; give the reference"):
        parse({"kind": "dpo_q", "model": str(bare)})
    with pytest.raises(ValueError, match="^evaluator.beta must be > 0, got 0$"):
        parse({"kind": "dpo_q", "model": str(bare), "reference": str(bare), "beta": 0})
    spec = parse({"kind": "dpo_q", "model": str(bare), "reference": str(bare), "beta": 0.5})
    assert (spec["beta"], spec["device"]) == (0.5, "cpu")


# -- the implicit reward on a tiny model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    return tutor.save_byte_model(tmp_path_factory.mktemp("byte"))


@pytest.fixture(scope="module")
def uniform_model(byte_model, tmp_path_factory):
    """The byte model with every weight 0: its logits are 0, so every token has probability 1/258."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("uniform")
    model = AutoModelForCausalLM.from_pretrained(byte_model)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(byte_model).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def policy_dir(byte_model, uniform_model, tmp_path_factory):
    """A 'trained' policy as ``treepref train`` saves one: another random byte model, a summary naming the uniform
    model as the base it started from and beta 0.5."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("policy") / "model"
    tutor.save_byte_model(folder, seed=7)
    AutoTokenizer.from_pretrained(byte_model).save_pretrained(folder)
    (folder / "treepref-train.json").write_text(json.dumps(
        {"method": "dpo", "base_model": uniform_model, "config": {"loss": {"beta": 0.5}}}))
    return folder


def logp(folder, context, action):
    """log p(action | context) by hand: one unbatched forward pass over the whole sequence, every position's
    log-softmax, the action's tokens read one by one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(context) + list(action)])).logits[0]
    lp = logits.log_softmax(-1)
    return sum(lp[len(context) - 1 + i, t].item() for i, t in enumerate(action))


def agent_tree(byte_model):
    """A hand-built transcript: a prompt, a search (with the page it showed) and a buy that ended the episode."""
    from treepref.tree import Tree

    enc = tutor.FolderTokenizer(byte_model)
    tree = Tree("shop-x", "buy a mug", None)
    tree.token_ids[ROOT] = enc.encode("<user>\nbuy a mug\n<assistant>\nAction:")
    page = "Observation: B0MUG1 Mug $9\n\nAction:"
    a = tree.add(ROOT, "search[mug]", token_ids=enc.encode(" search[mug]\n"), obs=page, obs_ids=enc.encode(page))
    b = tree.add(a, "click[b0mug1]", token_ids=enc.encode(" click[b0mug1]\n"))
    c = tree.add(a, "click[buy now]", token_ids=enc.encode(" click[buy now]\n"), terminated=True, reward=1.0)
    return tree, enc, (a, b, c)


def test_dpo_q_is_beta_times_the_log_ratio_of_the_actions_ids(policy_dir, uniform_model, byte_model):
    """Against the uniform reference log π_ref(a|s) = −len(a)·ln 258, so Q = 0.5·(log π_θ(a|s) + len(a)·ln 258);
    the context of a step is its parent's ids (the observation included), and the terminated buy is scored with
    EOS after it, as the trainer appended it to a final side."""
    from treepref.envs.base import State
    from treepref.problems import Problem
    from treepref.search.evaluators import evaluate, parse

    tree, enc, (a, b, c) = agent_tree(byte_model)
    eos = enc.tok.eos_token_id
    states = {ROOT: State(Problem("shop-x", "buy a mug"))}
    spec = parse({"kind": "dpo_q", "model": str(policy_dir.parent)})  # the run's output folder: model/ inside
    evidence = asyncio.run(evaluate(spec, tree, states, [a, b, c], None))
    got = [v for [(n, v)] in evidence]
    assert [n for [(n, _)] in evidence] == [a, b, c]
    rows = [(tree.prompt_ids(ROOT), tree.token_ids[a]), (tree.prompt_ids(a), tree.token_ids[b]),
            (tree.prompt_ids(a), tree.token_ids[c] + [eos])]
    assert enc.decode(rows[1][0]).endswith("search[mug]\nObservation: B0MUG1 Mug $9\n\nAction:")
    want = [0.5 * (logp(policy_dir, s, act) + len(act) * math.log(258)) for s, act in rows]
    assert got == pytest.approx(want, abs=1e-4)
    assert [tree.scores[n]["dpo_q"] for n in (a, b, c)] == got
    assert logp(uniform_model, rows[0][0], rows[0][1]) == pytest.approx(-len(rows[0][1]) * math.log(258), abs=1e-4)
    # without the EOS the buy would score differently: the check can tell
    assert abs(want[2] - 0.5 * (logp(policy_dir, rows[2][0], tree.token_ids[c]) + len(tree.token_ids[c])
                                * math.log(258))) > 1e-3
    same = parse({"kind": "dpo_q", "model": str(policy_dir), "reference": str(policy_dir), "beta": 2.0})
    assert [v for [(_, v)] in asyncio.run(evaluate(same, tree, states, [a, b, c], None))] == pytest.approx(
        [0.0, 0.0, 0.0], abs=1e-5)  # a policy against itself: no preference


def test_batched_rows_read_each_actions_own_positions(policy_dir, byte_model):
    """Rows of different context lengths in one batch (right-padded, only the last positions projected), and
    sibling actions after one context (the context run once, its cache repeated), score as each does alone."""
    from treepref.verifiers.trained import load_q_model

    tree, enc, (a, b, c) = agent_tree(byte_model)
    rows = [(tree.prompt_ids(ROOT), tree.token_ids[a]), (tree.prompt_ids(a), tree.token_ids[b]),
            (tree.prompt_ids(a)[:-3], tree.token_ids[c]), (enc.encode("x"), enc.encode("yz")),
            (tree.prompt_ids(a), []),
            # three siblings after the root, of three lengths (one of a single token), in two chunks of two
            (tree.prompt_ids(ROOT), tree.token_ids[c]), (tree.prompt_ids(ROOT), enc.encode("q"))]
    q = load_q_model(policy_dir, batch_size=2)
    together = q.log_ratios(rows)
    alone = [q.log_ratios([r])[0] for r in rows]
    assert together == pytest.approx(alone, abs=1e-4) and together[4] == 0.0
    assert len({round(x, 3) for x in together[:4] + together[5:]}) == 6  # the rows are told apart
    assert together[3] == pytest.approx(logp(policy_dir, *rows[3]) + 2 * math.log(258), abs=1e-4)
    with pytest.raises(ValueError, match=r"row 0: token id 300 is outside the vocabulary of .* \(258 ids\); the "
                                         "ids come from another tokenizer"):
        q.log_ratios([([1, 2], [300])])


# -- the loop, as recipes --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop_tutor():
    remove = tutor.register("shop-tutor", ShopTutor)
    yield {"model.backend": "shop-tutor"}
    remove()


def test_held_out_goals_are_disjoint_from_the_training_goals():
    from treepref.config import read_yaml
    from treepref.domains import build_problems

    def goals(path):
        section = read_yaml(path)["problems"]
        return {p.id for p in build_problems(section["source"], **section["options"])[0]}

    train, held_out = goals("configs/agent-q.yaml"), goals("configs/q-value.yaml")
    assert len(train) == 8 and len(held_out) == 16 and not train & held_out
    assert [p.id for p in build_problems("shop", count=2, options={"skip": 8})[0]] == ["shop-008", "shop-009"]
    with pytest.raises(ValueError, match=r"^problems source 'shop': unknown option 'skp' \(known: skip\)$"):
        build_problems("shop", options={"skp": 8})


def test_the_q_value_loop_runs_on_the_scripted_shopper(byte_model, shop_tutor, tmp_path):
    """agent-q.yaml's MCTS trees -> train-q-value.yaml's step-level DPO on their step pairs (multi-turn prompts,
    observations inside) -> q-value.yaml's guided episode with the trained policy as the Q-value model."""
    import treepref
    from treepref.train.config import load_train_config
    from treepref.train.data import examples
    from treepref.verifiers.trained import load_q_model

    # byte-level ids: an action line is ~45 tokens, so the token budgets are the recipes' in bytes
    setup = {**shop_tutor, "model.name": byte_model, "env.options.demos": 0, "sampling.max_tokens": 64,
             "env.max_tokens": 512}
    run = treepref.generate("configs/agent-q.yaml", tmp_path / "agent-q", overrides={
        **setup, "problems.options.count": 1, "search.options.simulations": 12, "run.concurrency": 1,
        "sampling.rollout_max_tokens": 256})
    [tree] = list(run.trees())
    assert run.summary["exports"]["step_pairs"]["rows"] == 2  # jacket vs mug search; size s vs m
    cfg = load_train_config("configs/train-q-value.yaml", [f"data={tmp_path / 'agent-q'}", f"model={byte_model}"])
    assert (cfg.method, cfg.format, cfg.train.max_length) == ("dpo", "step_pairs", 2048)
    enc = tutor.FolderTokenizer(byte_model)
    pairs, builder = examples(cfg.data, cfg.method, eos_id=enc.tok.eos_token_id, fmt=cfg.format,
                              max_length=cfg.train.max_length)
    assert builder.retokenized == 0 and builder.too_long == 0
    contexts = {tuple(tree.prompt_ids(n)): n for n in range(len(tree))}
    deep = 0
    for ex in pairs:  # the exported ids are the tree's: the parent's context, each side's action as generated
        parent = contexts[tuple(ex.prompt)]
        kids = {tuple(tree.token_ids[k]) + ((enc.tok.eos_token_id,) if tree.terminated[k] else ()): k
                for k in tree.children(parent)}
        assert tuple(ex.chosen) in kids and tuple(ex.rejected) in kids
        deep += "Observation:" in enc.decode(ex.prompt[len(tree.token_ids[ROOT]):])
    assert deep >= 1  # a pair below a page the shop showed

    summary = treepref.train("configs/train-q-value.yaml", tmp_path / "train", overrides={
        "data": str(tmp_path / "agent-q"), "model": byte_model, "train.max_steps": 6, "train.batch_size": 2,
        "train.learning_rate": 1e-2, "train.progress": False, "train.save_steps": 100})
    assert summary["method"] == "dpo" and summary["base_model"] == byte_model
    q = load_q_model(summary["model"])
    assert q.beta == 0.1
    margins = [a - b for a, b in zip(q.score_actions([(e.prompt, e.chosen) for e in pairs]),
                                     q.score_actions([(e.prompt, e.rejected) for e in pairs]))]
    assert all(m > 0 for m in margins), margins  # the Q-value model ranks each chosen action first

    guided = treepref.generate("configs/q-value.yaml", tmp_path / "q-value", overrides={
        **setup, "problems.options.options.skip": 0, "problems.options.count": 1,
        "search.options.scorer.model": summary["model"]})
    [episode] = list(guided.trees())
    ep = episode.meta["episode"]
    assert ep["ended"] and len(ep["actions"]) >= 2
    node = ROOT
    for chosen in ep["actions"]:  # at every step the action with the highest Q was taken
        kids = episode.children(node)
        qs = [episode.scores[k]["q"] for k in kids]
        assert chosen == kids[qs.index(max(qs))] and qs == [episode.scores[k]["dpo_q"] for k in kids]
        node = chosen
    first = ep["actions"][0]
    want = q.score_actions([(episode.prompt_ids(ROOT), episode.token_ids[first])])[0]
    assert episode.scores[first]["q"] == pytest.approx(want, abs=1e-5)
