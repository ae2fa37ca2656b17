"""A user's own stateful, Gymnasium-style environment, defined only here (reset/step, no clone), plugged in by
``module:Class``: searched, exported and checked with no change to treepref's code."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from test_search_common import PlainPolicy
from treepref.backends.base import Completion, GenerationStats, Sampling
from treepref.envs import EnvError, build_env
from treepref.envs.check import check
from treepref.extract import export
from treepref.domains import build_problems
from treepref.search import build_config, get_search
from treepref.search.base import SearchContext
from treepref.tokens import PLAIN

ENV = "test_env_plugin:GuessNumber"


class GuessNumber:
    """Guess a number from 1 to 8 in at most 4 guesses; the answer says higher or lower. Stateful, like most
    Gymnasium environments: ``step`` changes the object."""

    stop = ("\n",)
    lead = "Guess: "
    observation_format = "Feedback: {observation}\n"
    reward_range = (-0.1, 1.0)
    instances = 0  # how many objects the adapter built (replays build new ones)

    def __init__(self, high: int = 8, max_guesses: int = 4):
        self.high, self.max_guesses = high, max_guesses
        GuessNumber.instances += 1

    def reset(self, seed=None):
        self.target = random.Random(seed).randint(1, self.high)
        self.guesses = 0
        return f"I picked a number from 1 to {self.high}. Guess it.", {}

    def step(self, action):
        try:
            guess = int(action.strip())
        except ValueError:
            return "Say a number.", -0.1, False, False, {"valid": False}
        self.guesses += 1
        if guess == self.target:
            return "Right!", 1.0, True, False, {"guesses": self.guesses}
        hint = "higher" if guess < self.target else "lower"
        return hint, 0.0, False, self.guesses >= self.max_guesses, {"guesses": self.guesses}

    @staticmethod
    def sample_actions(text):
        return ["3", "5", "7", "nope"]


class GuessPolicy(PlainPolicy):
    """Guesses from a fixed cycle (the i-th of ``n`` samples takes the i-th guess) and records every prompt."""

    def __init__(self, guesses=("4", "6", "2", "8", "x", "1", "5", "3", "7"), run_past: str = ""):
        self.guesses, self.run_past = guesses, run_past  # run_past: text the stop token carries past the stop
        self.prompts: list[tuple[int, ...]] = []
        self.stats = GenerationStats()

    async def generate(self, prompts, params: Sampling):
        out = []
        for prompt in prompts:
            ids = tuple(prompt) if not isinstance(prompt, str) else tuple(PLAIN.encode(prompt))
            self.prompts.append(ids)
            seen = PLAIN.decode(ids).count("Feedback:")
            row = []
            for i in range(params.n):
                text = self.guesses[(i + 3 * seen) % len(self.guesses)] + "\n"
                toks = tuple(PLAIN.encode(text + self.run_past))  # the text is cut at the stop, the ids are not
                row.append(Completion(text, toks, -1.0 * len(toks), "stop", "\n", tuple([-1.0] * len(toks))))
            out.append(row)
        return out


def search(policy, cfg=None, problems=None, name="mcts", **env_options):
    env = build_env(ENV, env_options, policy=policy)
    ctx = SearchContext(env=env, policy=policy, sampling=Sampling(temperature=1.0, max_tokens=8), rollout_max_tokens=32)
    cfg = cfg or build_config("mcts", {"simulations": 12, "k": 3, "n_rollouts": 1})
    problems = problems or build_problems("seeds", count=3)[0]
    return [asyncio.run(get_search(name)(p, ctx, cfg)) for p in problems], env


def test_trees_and_step_pairs_hold_exactly_what_the_policy_saw():
    policy = GuessPolicy()
    trees, env = search(policy)
    assert all(len(t) > 4 for t in trees)
    sent = set(policy.prompts)
    for tree in trees:
        for node in range(len(tree)):
            assert PLAIN.decode(tree.prompt_ids(node)) == tree.prompt_text(node)
        assert tree.meta["messages"][0]["content"].startswith("I picked a number")
    ds, _ = export(trees, "step_pairs", rule="max_min", prefix=None, min_visits=None)
    assert len(ds) > 0
    for row in ds:
        assert tuple(row["prompt_ids"]) in sent  # the very ids the policy continued when it wrote both sides
        assert row["prompt"] == PLAIN.decode(row["prompt_ids"])
        assert row["chosen"] == PLAIN.decode(row["chosen_ids"]) and row["rejected"] == PLAIN.decode(row["rejected_ids"])
        if row["depth"] > 1:  # the environment's own feedback is in the context, as it was shown
            assert "Feedback: " in row["prompt"] and row["prompt"].endswith("Guess: ")


def test_rewards_success_and_truncation_come_from_the_environment():
    trees, _ = search(GuessPolicy())
    for tree in trees:
        for n in range(1, len(tree)):
            if tree.text[n] == "x":  # not a number: the env's penalty, nothing ends
                assert tree.reward[n] == -0.1 and not tree.is_final(n)
            if tree.terminated[n]:
                assert tree.reward[n] == 1.0 and tree.obs[n] == ""
            if tree.truncated[n]:
                assert tree.info[n]["guesses"] == 4 and not tree.terminated[n]
    assert any(tree.terminated[n] for tree in trees for n in range(len(tree)))


def test_forks_replay_from_reset_and_revisits_are_cached():
    GuessNumber.instances = 0
    trees, env = search(GuessPolicy())
    nodes = sum(len(t) - 1 for t in trees)
    assert env.replays > 0  # branches were rebuilt by replaying their prefix
    assert GuessNumber.instances <= nodes + len(trees)  # never more than one object per node (outcomes cached)
    before = GuessNumber.instances
    state = env.initial(build_problems("seeds", count=1)[0][0])
    first = asyncio.run(env.step(state, "4\n"))
    asyncio.run(env.step(state, "6\n"))
    assert asyncio.run(env.step(state, "4\n")).state == first.state  # a sibling did not move this branch
    assert GuessNumber.instances - before <= 2


def test_a_step_from_a_replayed_prefix_matches_a_fresh_episode():
    _, env = search(GuessPolicy(), problems=build_problems("seeds", count=1, seed=5)[0])
    problem = build_problems("seeds", count=1, seed=5)[0][0]
    state = env.initial(problem)
    for guess in ("2", "3"):
        state = asyncio.run(env.step(state, guess + "\n")).state
    live = GuessNumber()
    live.reset(seed=5)
    for guess in ("2", "3"):
        expected = live.step(guess)[0]
    assert state.text.rstrip().endswith(f"Feedback: {expected}\nGuess:")


def test_discounted_backup_adds_intermediate_rewards():
    """Q = r + γ·V, hand-computed: root -> a (a wrong guess, reward -0.1) -> b (right, 1.0), γ = 0.5."""
    from treepref.tree import Tree

    tree = Tree("t", "")
    a = tree.add(0, "x", reward=-0.1)
    b = tree.add(a, "4", reward=1.0, terminated=True)
    tree.backup(b, 1.0, discount=0.5)
    assert tree.value(b) == 1.0
    assert tree.value(a) == pytest.approx(-0.1 + 0.5 * 1.0)  # the reward for stepping into a, then γ·V
    assert tree.value(0) == pytest.approx(0.5 * 0.4)
    tree.backup(a, 0.5, discount=0.5)  # a valued where it stands (0.5 to follow): its own -0.1 still counts
    assert tree.value_sum[a] == pytest.approx(0.4 + (-0.1 + 0.5 * 0.5))
    assert tree.value_sum[0] == pytest.approx(0.2 + 0.5 * 0.15)
    plain = Tree("t", "")
    c = plain.add(plain.add(0, "s"), "The answer is 4.", reward=1.0, terminated=True)
    plain.backup(c, 1.0)  # outcome rewards only, γ = 1: the plain mean everywhere
    assert [plain.value(n) for n in range(3)] == [1.0, 1.0, 1.0]


class Drifting(GuessNumber):
    """Broken on purpose: each object numbers its feedback, so a replayed branch reads differently."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.said = 0

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        self.said += GuessNumber.instances
        return f"{obs} #{self.said}", reward, term, trunc, info


def test_checker_passes_the_plugged_env_and_catches_a_broken_one():
    report = check(build_env(ENV), build_problems("seeds", count=3)[0])
    assert report.ok, report.failures
    assert report.episodes_ended == 9
    broken = build_env("test_env_plugin:Drifting", {"live_cache": 0})  # every fork replays, outcomes forgotten
    broken._outcomes = type("Forgetful", (dict,), {"__contains__": lambda self, key: False})()
    failures = check(broken, build_problems("seeds", count=1)[0]).failures
    assert any("different results" in f or "changed the result" in f for f in failures)


def test_unknown_options_and_classes_are_one_line_errors():
    with pytest.raises(EnvError, match="unknown option env.options.colour"):
        build_env(ENV, {"colour": 1})
    with pytest.raises(EnvError, match="environment 'test_env_plugin:Nope': module 'test_env_plugin' has no "
                                       "attribute 'Nope'"):
        build_env("test_env_plugin:Nope")
    assert build_env(ENV, {"high": 4, "max_depth": 3}).max_depth == 3  # the adapter's option, and the class's


@pytest.mark.slow
def test_generate_from_a_recipe_naming_the_class(tmp_path, model_dir):
    """The CLI end to end with the real model: env.name = module:Class, problems default to seeds."""
    from treepref.cli import main

    config = tmp_path / "guess.yaml"
    config.write_text(f"""
model: {{name: {model_dir}, backend: hf}}
env: {{name: "{ENV}", options: {{high: 6}}, max_depth: 3}}
problems: {{options: {{count: 2}}}}
sampling: {{temperature: 1.0, max_tokens: 6, rollout_max_tokens: 18}}
search: {{name: mcts, options: {{simulations: 3, k: 2, n_rollouts: 1}}}}
extract: {{formats: [step_pairs, trees], options: {{prefix: null, min_visits: null}}}}
run: {{output: {tmp_path / 'run'}}}
""")
    assert main(["generate", "-c", str(config), "--quiet"]) == 0
    trees = sorted((tmp_path / "run" / "trees").glob("*.json"))
    assert [t.name for t in trees] == ["seed-0.json", "seed-1.json"]
    from treepref.tree import Tree

    tree = Tree.load(trees[0])
    assert tree.meta["env"] == ENV and "I picked a number from 1 to 6" in tree.prompt_text(0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    for node in range(1, len(tree)):  # every context is its ids, the observations included
        assert tok.decode(tree.prompt_ids(node)) == tree.prompt_text(node)


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch):
    """docs/environments.md's example class, copied out of the page, conforms and searches."""
    import re

    page = (Path(__file__).parents[1] / "docs" / "environments.md").read_text()
    source = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    assert len(source.splitlines()) < 60
    (tmp_path / "mygames.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    report = check(build_env("mygames:GuessNumber", {"high": 6}), build_problems("seeds", count=3)[0])
    assert report.ok, report.failures
    policy = GuessPolicy()
    env = build_env("mygames:GuessNumber", {"high": 6}, policy=policy)
    ctx = SearchContext(env=env, policy=policy, sampling=Sampling(max_tokens=8), rollout_max_tokens=32)
    tree = asyncio.run(get_search("mcts")(build_problems("seeds", count=1)[0][0], ctx,
                                          build_config("mcts", {"simulations": 8, "k": 3})))
    assert any(tree.terminated[n] and tree.info[n].get("success") for n in range(len(tree)))


def test_a_token_that_runs_past_the_stop_string_stays_in_the_context():
    """A backend cuts the text at the stop string, but the token that completed it may carry more (SmolLM2's
    "\\n  "): the context holds what the ids spell, so text and ids never drift apart."""
    policy = GuessPolicy(run_past="  ")
    trees, _ = search(policy, problems=build_problems("seeds", count=1)[0])
    tree = trees[0]
    child = tree.children(0)[0]
    assert tree.rendered[child].endswith("\n  ") and tree.text[child] == "4"
    for node in range(len(tree)):
        assert PLAIN.decode(tree.prompt_ids(node)) == tree.prompt_text(node)
