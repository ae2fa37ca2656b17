"""A user's first stateful game, plugged in by ``module:Class`` (issue 26): one class for many tasks (reset
options), the hooks (valid actions, worked episodes, success), ``check-env`` past the adapter's caches, an
action cut off by ``max_tokens``, one-line errors, the viewer's opening observation, the success rule and why
an export is empty. No model: a scripted guesser or no policy at all."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from test_search_common import PlainPolicy
from treepref.backends.base import Completion, GenerationStats, Sampling
from treepref.cli import main
from treepref.domains import build_problems
from treepref.envs import EnvError, build_env
from treepref.envs.base import is_success
from treepref.envs.check import check
from treepref.problems import Problem, load_problems
from treepref.search import build_config, get_search
from treepref.search.base import SearchContext, new_tree
from treepref.tokens import PLAIN

DOCS = Path(__file__).parents[1] / "docs" / "environments.md"


def _docs_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    return next(b for b in blocks if marker in b)


# The docs' multi-task example, copied out of the page, is this module's ``Fetch``: the tests run its code.
exec(compile(_docs_block("class Fetch"), str(DOCS), "exec"))
Fetch = globals()["Fetch"]
HOUSE = "test_env_first_try:Fetch"
TASKS = [{"item": "key"}, {"item": "lamp"}]


def tasks(count=2, options=TASKS):
    return build_problems("seeds", count=count, options=options)[0]


# -- 1. each problem carries its reset options ------------------------------------------------------------
def test_seeds_entries_and_problem_rows_carry_reset_options(tmp_path):
    problems = tasks()
    assert [p.id for p in problems] == ["item=key-seed-0", "item=key-seed-1", "item=lamp-seed-0", "item=lamp-seed-1"]
    assert problems[2].meta == {"seed": 0, "options": {"item": "lamp"}}
    env = build_env(HOUSE)
    assert env.start(problems[0])[1].startswith("Fetch the key.")
    assert env.start(problems[2])[1].startswith("Fetch the lamp.")  # same seed, another task: no subclass
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"id": "lamp-3", "prompt": "Bring the lamp.", "seed": 3, "options": {"item": "lamp"}}\n')
    [row], errors = load_problems(path)
    assert not errors and env.start(row)[1].startswith("Fetch the lamp.")
    assert env.messages(row)[-1]["content"].startswith("Bring the lamp.\n\n Fetch the lamp.")
    with pytest.raises(ValueError, match="options must be a mapping"):
        build_problems("seeds", count=1, options=["lamp"])


# -- 2. hooks are instance methods; check-env walks the valid actions or says it could not ----------------
class NoActions(Fetch):
    valid_actions = None  # offers none: check-env can only try generic strings


class OldHook(Fetch):
    valid_actions = None

    def sample_actions(self, text):  # the older hook, written as an ordinary instance method
        return Fetch.valid_actions(self)


def test_check_env_walks_valid_actions_and_says_when_there_are_none():
    report = check(build_env(HOUSE), tasks())
    assert report.ok, report.failures
    assert report.actions == "valid" and report.endings["solved"] > 0
    bare = check(build_env("test_env_first_try:NoActions"), tasks(1))
    assert any("could not reach an ending" in f and "offer valid actions" in f for f in bare.failures)
    old = check(build_env("test_env_first_try:OldHook"), tasks(1))
    assert old.ok, old.failures


# -- 3. check-env past every cache --------------------------------------------------------------------------
class Unseeded(Fetch):
    """Broken on purpose: every new object hides the items anew, whatever the seed."""

    made = 0

    def reset(self, seed=None, options=None):
        Unseeded.made += 1
        return super().reset(seed=Unseeded.made, options=options)


class SeedBlind(Fetch):
    """Deterministic but ignores the seed: every seed is the same house."""

    def reset(self, seed=None, options=None):
        return super().reset(seed=7, options=options)


def test_check_env_catches_a_reset_that_ignores_its_seed():
    assert check(build_env(HOUSE), tasks()).ok  # the adapter's caches alone would have hidden both below
    failures = check(build_env("test_env_first_try:Unseeded"), tasks(2, [TASKS[0]])).failures
    assert any("same seed gave different first observations" in f for f in failures), failures
    assert all("\n" not in f for f in failures) and len(failures) == 2  # one reason per problem
    blind = check(build_env("test_env_first_try:SeedBlind"), tasks(3, [TASKS[0]]))
    assert blind.ok and any("does reset use its seed" in n for n in blind.notes)


class DriftingStep(Fetch):
    """Broken on purpose: the third step of every object says something new."""

    made = 0

    def step(self, action):
        obs, *rest = super().step(action)
        if self.moves == 2:
            DriftingStep.made += 1
            obs += f" ({DriftingStep.made})"
        return (obs, *rest)


def test_a_walk_replayed_on_a_fresh_object_must_match():
    failures = check(build_env("test_env_first_try:DriftingStep"), tasks(1, [TASKS[0]])).failures
    assert any("replayed on a fresh object gave" in f for f in failures), failures


# -- 4. the summary: endings by kind, rewards seen, the success rule ------------------------------------------
def test_check_env_summary_lists_endings_rewards_and_the_success_rule(capsys):
    assert main(["check-env", HOUSE, "--count", "2", "--tasks", json.dumps(TASKS)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"endings: .*\d+ solved", out) and "ended unsolved" in out
    assert re.search(r"rewards seen: 0 ×\d+, 1 ×\d+", out)
    assert 'success: info["success"]' in out and "conforms" in out
    assert "hooks: valid_actions, demonstrations, success\n" in out
    assert main(["check-env", "test_env_first_try:NoActions", "--count", "1"]) == 1
    assert "hooks: demonstrations, success (not offered: valid_actions)" in capsys.readouterr().out


# -- 5. worked episodes, rendered like real turns ----------------------------------------------------------
def test_demonstrations_render_token_for_token_like_real_turns():
    env = build_env(HOUSE)
    problem = tasks(1)[0]
    msgs = env.messages(problem)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    [(demo, actions)] = env.demonstrations(problem)
    assert demo.meta == {"seed": 1003, "options": {"item": "map"}} and msgs[0]["content"].startswith("Fetch the map.")
    # the same actions written by a policy (ids as generated) and stepped for real give the same text
    state = start = env.initial(demo)
    for action in actions:
        ids = PLAIN.encode(action + "\n")
        state = asyncio.run(env.step(state, action + "\n", token_ids=ids)).state
    real = env.lead + state.text[len(start.text):]
    assert msgs[1]["content"] == real.rstrip()
    assert PLAIN.decode(state.token_ids[len(start.token_ids):]) == state.text[len(start.text):]
    assert state.text.rstrip().endswith("You take the map.") is False  # the final step adds no observation
    assert "You are in the kitchen; you see map." in msgs[1]["content"]


def test_demos_from_a_file_for_a_stateful_class_and_for_shop(tmp_path):
    rows = tmp_path / "demos.jsonl"
    rows.write_text(json.dumps({"seed": 5, "options": {"item": "lamp"}, "actions": [" go study", " take lamp"]}) + "\n"
                    + json.dumps({"seed": 0, "options": {"item": "key"}, "actions": [" go attic"]}) + "\n")
    env = build_env(HOUSE, {"demos": str(rows)})  # today: refused as an unknown option
    msgs = env.messages(tasks(1)[0])  # item=key, seed 0: its own episode is left out
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"].startswith("> go study") and "take lamp" in msgs[1]["content"]
    goal, other = build_problems("shop", count=2)[0]
    shop = build_env("shop", {"demos": [{"id": other.id, "question": other.prompt, "meta": other.meta,
                                         "actions": [" search[red shirt]"]}]})
    assert shop.messages(goal)[-2]["content"] == "Action: search[red shirt]"
    with pytest.raises(EnvError, match="env.options.demos"):
        build_env(HOUSE, {"demos": str(tmp_path / "missing.jsonl")}).messages(tasks(1)[0])
    with pytest.raises(EnvError, match="needs `actions`"):
        build_env(HOUSE, {"demos": [{"seed": 1}]}).messages(tasks(1)[0])


# -- 6. an action cut off by max_tokens is not sent to the environment -------------------------------------
class Steps(Fetch):
    actions: list[str] = []  # every action any object was stepped with (replays included)

    def step(self, action):
        Steps.actions.append(action)
        return super().step(action)


class CutPolicy(PlainPolicy):
    """Writes "go kitchen" whole, or "take" cut off by the token budget (no stop string)."""

    def __init__(self):
        self.stats = GenerationStats()

    async def generate(self, prompts, params: Sampling):
        out = []
        for _ in prompts:
            row = []
            for i in range(params.n):
                text, finish, stop = ("go kitchen\n", "stop", "\n") if i % 2 == 0 else (" take the la", "length", None)
                ids = tuple(PLAIN.encode(text))
                row.append(Completion(text, ids, -1.0, finish, stop, tuple([-0.1] * len(ids))))
            out.append(row)
        return out


def _search_cut(**options):
    policy = CutPolicy()
    env = build_env("test_env_first_try:Steps", {"max_depth": 3, **options}, policy=policy)
    ctx = SearchContext(env=env, policy=policy, sampling=Sampling(max_tokens=4), rollout_max_tokens=16)
    return asyncio.run(get_search("mcts")(tasks(1)[0], ctx, build_config("mcts", {"simulations": 4, "k": 2})))


def test_an_action_cut_off_by_max_tokens_is_not_acted_on():
    Steps.actions = []
    tree = _search_cut()
    cut = [n for n in range(1, len(tree)) if tree.text[n].startswith("take")]
    assert cut and all(tree.truncated[n] and tree.obs[n] == "" and tree.reward[n] is None for n in cut)
    assert all(tree.info[n].get("cut_off") for n in cut)
    assert "go kitchen" in Steps.actions and not any("the la" in a for a in Steps.actions)  # never half an action
    old = _search_cut(partial_actions=True)  # the switch keeps the old behaviour: the env reads half an action
    assert any(tree_n.startswith("take") and old.obs[n] for n, tree_n in enumerate(old.text) if n)


# -- 7. one-line errors for a failing constructor or reset -------------------------------------------------
class FromFile(Fetch):
    def __init__(self, path: str = "house.json", max_moves: int = 6):
        super().__init__(max_moves)
        self.plan = Path(path).read_text()


def test_a_failing_constructor_or_reset_is_one_line_naming_the_class_and_option(tmp_path, capsys):
    with pytest.raises(EnvError, match=r"'test_env_first_try:FromFile' could not be built \(env.options.path="):
        build_env("test_env_first_try:FromFile", {"path": "/no/such/house.json"})
    assert main(["check-env", "test_env_first_try:FromFile", "--set", "path=/no/such/house.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "FromFile" in err and "env.options.path='/no/such/house.json'" in err and "\n" not in err
    assert main(["check-env", HOUSE, "--tasks", '{"item": "sword"}', "--count", "1"]) == 1
    out = capsys.readouterr().out
    assert "Fetch.reset(seed=0, options={'item': 'sword'}) raised ValueError: unknown item 'sword'" in out
    from treepref.envs import probe_env

    with pytest.raises(EnvError, match=r"reset\(seed=0, options=\{'item': 'sword'\}\) raised ValueError"):
        probe_env(HOUSE, {}, tasks(1, [{"item": "sword"}]), "recipe.yaml")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
env: {{name: "{HOUSE}"}}
problems: {{source: seeds, options: {{count: 1, options: {{item: sword}}}}}}
search: {{name: mcts, options: {{simulations: 2, k: 2}}}}
run: {{output: {tmp_path / 'run'}}}
""")
    assert main(["generate", "-c", str(recipe), "--quiet"]) == 2  # before any model loads
    err = capsys.readouterr().err.strip()
    assert "reset(seed=0, options={'item': 'sword'}) raised ValueError" in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()


class RaisingHook(Fetch):
    def valid_actions(self):
        raise KeyError("room")


class RaisingSuccess(Fetch):
    def success(self):
        raise RuntimeError("no score\nkept")


class RaisingDemos(Fetch):
    def demonstrations(self):
        return [{"seed": 1, "options": {"item": "sword"}, "actions": [" take sword"]}]


def test_a_hook_that_raises_is_caught_with_a_one_line_reason():
    failures = check(build_env("test_env_first_try:RaisingHook"), tasks(1, [TASKS[0]])).failures
    assert failures == ["item=key-seed-0: test_env_first_try:RaisingHook.valid_actions() after 0 action(s) raised "
                        "KeyError: 'room'"]
    [failure] = check(build_env("test_env_first_try:RaisingSuccess"), tasks(1, [TASKS[0]])).failures
    assert failure.endswith("RaisingSuccess.success() raised RuntimeError: no score kept")
    [failure] = check(build_env("test_env_first_try:RaisingDemos"), tasks(1, [TASKS[0]])).failures
    assert "RaisingDemos.reset(seed=1, options={'item': 'sword'}) raised ValueError: unknown item 'sword'" in failure


# -- 8. the viewer shows the opening observation ------------------------------------------------------------
def test_the_viewer_shows_the_opening_observation():
    from treepref.view import tree_data

    policy = CutPolicy()
    env = build_env(HOUSE, policy=policy)
    ctx = SearchContext(env=env, policy=policy)
    tree, _ = new_tree(tasks(1)[0], ctx, "mcts", {})
    assert tree.prompt == ""  # a seeds problem has no text of its own: the game states the task
    assert tree_data(tree, None)["prompt"].startswith("Fetch the key. You are in the hall")


# -- 9. success: info["success"], then Gymnasium's info["is_success"], then the threshold ------------------
class GymStyle(Fetch):
    success = None  # no hook: says it the Gymnasium way

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {"is_success": self.won} if terminated else info


def test_success_reads_success_then_is_success_then_the_threshold():
    assert is_success(0.0, {"is_success": True}) and not is_success(1.0, {"is_success": False})
    assert not is_success(1.0, {"success": False, "is_success": True})
    assert is_success(0.5, {}, threshold=0.5) and not is_success(0.4, {}, threshold=0.5)
    gym = check(build_env("test_env_first_try:GymStyle"), tasks())
    assert gym.ok and gym.success_rule.startswith('info["is_success"]')
    plain = check(build_env("test_env_plugin:GuessNumber"), build_problems("seeds", count=2)[0])
    assert plain.success_rule.startswith("reward >= 1")


# -- 10. why an export has 0 pairs ---------------------------------------------------------------------------
def test_zero_pairs_say_why_in_the_summary(tmp_path, capsys):
    from treepref.explain import zero_pairs_reason
    from treepref.runner import tree_path

    tree = _search_cut()  # never takes anything: every value is 0
    assert "0 pairs: no node with a value above or below 0" in zero_pairs_reason([tree])
    assert re.search(r"\(0 of \d+ episodes scored\)", zero_pairs_reason([tree]))
    run = tmp_path / "run"
    tree.save(tree_path(run, tree.problem_id))
    (run / "config.yaml").write_text(f'env: {{name: "test_env_first_try:Steps"}}\n'
                                     "extract: {formats: [step_pairs], options: {prefix: null}}\n")
    assert main(["extract", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step_pairs"]["rows"] == 0
    assert result["step_pairs"]["why"].startswith("0 pairs: no node with a value above or below 0")
    from treepref.cli import _print_summary

    _print_summary({"output": str(run), "exports": result})
    assert "0 pairs: no node with a value" in capsys.readouterr().out


# -- acceptance: the docs' example conforms under the stricter check-env ----------------------------------
def test_the_documented_multi_task_example_conforms_and_searches():
    report = check(build_env(HOUSE), tasks(2, [{"item": i} for i in Fetch.items]))
    assert report.ok, report.failures
    assert not report.notes and report.endings["solved"] > 0
    assert report.success_rule.startswith('info["success"]')


class NoOptions(Fetch):
    demonstrations = None  # Fetch's own worked episode has reset options too

    def reset(self, seed=None):
        return super().reset(seed=seed)


def test_reset_options_a_reset_cannot_take_are_refused_not_dropped():
    failures = check(build_env("test_env_first_try:NoOptions"), tasks(1, [TASKS[1]])).failures
    assert failures == ["item=lamp-seed-0: test_env_first_try:NoOptions.reset(seed=0, options={'item': 'lamp'}): "
                        "problem 'item=lamp-seed-0' has reset options but reset() takes no `options` parameter"]
    assert check(build_env("test_env_first_try:NoOptions"), build_problems("seeds", count=1)[0]).ok
