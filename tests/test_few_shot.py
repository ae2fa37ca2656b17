"""Few-shot examples: where they go in the prompt, that exports rebuild the same prompt, and bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from fractions import Fraction

import pytest

from treepref.backends.base import Sampling
from treepref.backends.scripted import EOS, ScriptedPolicy
from treepref.config import ConfigError, load_config
from treepref.domains.arithmetic import FEW_SHOT, check_step, generate, worked_examples
from treepref.envs.base import State
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.extract import export
from treepref.extract.common import Prompter
from treepref.extract.examples import example_tree
from treepref.few_shot import FewShotError, Shot, load_shots, shot_messages, shots_to_json
from treepref.problems import Problem
from treepref.runner import load_trees, run_problems
from treepref.search.base import SearchContext
from treepref.tree import ROOT
from treepref.search.sample import SampleConfig, sample

SHOTS = (Shot("What is 1 + 1?", ("1 + 1 = 2", "The answer is 2.")),)


def test_builtin_arithmetic_examples_are_right():
    """Wrong worked examples would teach the policy wrong arithmetic: every step must check."""
    for shot in FEW_SHOT + worked_examples(1) + worked_examples(3):
        *work, last = shot.steps
        assert all(check_step(None, s) is True for s in work), shot
        expr = re.search(r"Compute (.+?)\. ", shot.question).group(1)
        value = eval(expr, {"__builtins__": {}})  # the question is digits and + - * ( ) only
        assert last == f"The answer is {value}." and Fraction(work[-1].split("= ")[1]) == value


def test_matched_examples_have_the_problems_length_and_are_never_problems():
    # A model shown the very question it is asked copies the answer and inflates the label bench.
    for d in (1, 2, 4):
        shots = load_shots(f"arithmetic:{d}")
        assert len(shots) == 3 and all(len(s.steps) == d + 1 for s in shots)
        problems = {p.prompt for seed in range(5) for p in generate(200, seed=seed, difficulty=d)}
        assert not {s.question for s in shots + FEW_SHOT} & problems
    with pytest.raises(FewShotError, match="positive integer"):
        load_shots("arithmetic:x")


def test_examples_sit_between_the_system_message_and_the_problem():
    problem = Problem("p", "Compute 2 + 3.", "5")
    env = ReasoningEnv(template=lambda m: m, system="Be brief.", delimiter="\n---\n", few_shot=SHOTS)
    msgs = env.prompt(problem)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"] == "1 + 1 = 2\n---\nThe answer is 2."  # steps joined by the env's delimiter
    assert msgs[-1]["content"] == "Compute 2 + 3."
    # a problem that brings its own system message keeps it first
    own = Problem("q", [{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}])
    assert [m["content"] for m in own.messages("Ignored.", shot_messages(SHOTS))] == [
        "Own.", "What is 1 + 1?", "1 + 1 = 2\n\nThe answer is 2.", "Hi"]


def test_exported_prompts_carry_the_examples_the_search_saw():
    env = ReasoningEnv(template=plain_template, few_shot=SHOTS)
    tree = example_tree()
    ds, _ = export([tree], "step_pairs", template=plain_template, few_shot=SHOTS, prefix=None, min_visits=None)
    assert len(ds) > 0
    problem = Problem(tree.problem_id, tree.prompt, tree.answer)
    for row in ds:
        prefix = tuple(row["prefix_steps"])
        assert row["prompt"] == env.render_text(State(problem, prefix))
        assert row["prompt"] + row["chosen"] == env.render_text(State(problem, prefix + (row["chosen"][:-2],)))
        assert "What is 1 + 1?" in row["prompt"]
    plain, _ = export([tree], "step_pairs", template=plain_template, prefix=None, min_visits=None)
    assert all("What is 1 + 1?" not in r["prompt"] for r in plain)
    # a tree that recorded its setup (as the runner writes them) is exported with it, whatever is asked now
    tree.meta.update(system=env.system, delimiter=env.delimiter, few_shot=shots_to_json(SHOTS))
    recorded, _ = export([tree], "step_pairs", template=plain_template, system="Other.", delimiter="\n",
                         prefix=None, min_visits=None)
    assert [r["prompt"] for r in recorded] == [r["prompt"] for r in ds]


def test_the_runner_records_the_examples_in_each_tree(tmp_path):
    async def exact(problem, answer):
        return float(answer == problem.answer)

    policy = ScriptedPolicy(lambda steps: ["The answer is 2." + EOS])
    env = ReasoningEnv(template=plain_template, verifier=exact, few_shot=SHOTS)
    ctx = SearchContext(env=env, policy=policy, sampling=Sampling(max_tokens=16))
    problems = [Problem("a", "What is 1 + 1?", "2")]
    asyncio.run(run_problems(problems, sample, SampleConfig(n=2), ctx, tmp_path, progress=False))
    (tree,) = load_trees(tmp_path)
    assert load_shots(tree.meta["few_shot"]) == SHOTS
    # what the policy was asked holds the examples, in front of the problem
    (prompts, _), = policy.calls
    assert [policy.decode(p) for p in prompts] == [env.prompt(problems[0])]  # sent as its token ids
    prompts = [policy.decode(p) for p in prompts]
    assert prompts[0].index("1 + 1 = 2\n\nThe answer is 2.") < prompts[0].rindex("What is 1 + 1?")
    # exports rebuild that prompt from the tree, even when the examples asked for now differ (a built-in set
    # changed, a file was edited): the recorded ones are what the policy saw
    other = (Shot("What is 2 + 2?", ("2 + 2 = 4", "The answer is 4.")),)
    assert Prompter(plain_template, few_shot=other).for_tree(tree).prompt(tree, ROOT) == prompts[0]
    # and a tree searched without examples gets none
    bare = dataclasses.replace(env, few_shot=())
    ctx = dataclasses.replace(ctx, env=bare)
    asyncio.run(run_problems(problems, sample, SampleConfig(n=2), ctx, tmp_path / "plain", progress=False))
    (plain,) = load_trees(tmp_path / "plain")
    assert Prompter(plain_template, few_shot=SHOTS).for_tree(plain).prompt(plain, ROOT) == bare.prompt(problems[0])


@pytest.mark.parametrize("content, needle", [
    ('{"question": "Q", "steps": ["a"]}\n{"question": "Q2"\n', "shots.jsonl:2: not valid JSON"),
    ('{"question": "Q", "steps": []}\n', "shots.jsonl:1: field 'steps'"),
    ('{"steps": ["a"]}\n', "shots.jsonl:1: field 'question'"),
    ('{"question": "Q"}\n', "shots.jsonl:1: needs 'steps'"),
    ("\n", "no examples"),
])
def test_bad_example_files_name_file_line_and_field(tmp_path, content, needle):
    path = tmp_path / "shots.jsonl"
    path.write_text(content)
    with pytest.raises(FewShotError, match=re.escape(needle)):
        load_shots(str(path))


def test_example_sources(tmp_path):
    path = tmp_path / "shots.jsonl"
    path.write_text(json.dumps({"question": "What is 1 + 1?", "solution": "1 + 1 = 2\n\nThe answer is 2."}) + "\n")
    assert load_shots(str(path)) == SHOTS
    assert load_shots([{"question": "What is 1 + 1?", "steps": ["1 + 1 = 2", "The answer is 2."]}]) == SHOTS
    assert load_shots("arithmetic") == FEW_SHOT and load_shots(None) == ()
    with pytest.raises(FewShotError, match="neither a built-in set"):
        load_shots("no-such-set")


def test_config_rejects_bad_examples_before_anything_loads(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("env:\n  few_shot:\n    - {question: Q}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: env.few_shot\[0\]: needs 'steps'"):
        load_config(recipe)
    recipe.write_text("env:\n  few_shot: arithmetic\n")
    assert load_config(recipe).env.few_shot == "arithmetic"
