"""One rule each for names: the ``module:attr`` resolver's messages, the option coercer's, and a user's plug-in
registered by name in every registry and used through the entry point a built-in of its kind is used by."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_search_common import make_ctx
from treepref.backends import BACKENDS, make_policy
from treepref.backends.scripted import ScriptedPolicy
from treepref.config import ConfigError, config_from_dict
from treepref.domains import SOURCES, build_problems
from treepref.envs import ENVS, EnvError, build_env, default_problems
from treepref.envs.reasoning import ReasoningEnv, plain_template
from treepref.extract import FORMATS, RULES, export, write_export
from treepref.extract.common import Pair
from treepref.extract.examples import example_tree
from treepref.extract.formats import Format, Item
from treepref.options import coerce
from treepref.problems import Problem
from treepref.registry import Registry, resolve
from treepref.search import SEARCHES, Search, build_config, get_config_class, get_search
from treepref.search.base import expand, new_tree, settings_of
from treepref.search.evaluators import EVALUATORS, Evaluator, parse
from treepref.tree import ROOT
from treepref.verifiers.backup import AGGREGATORS, get_aggregator
from treepref.verifiers.step_check import STEP_CHECKS, load_step_check

ALL = {"search": SEARCHES, "environment": ENVS, "backend": BACKENDS, "problems source": SOURCES,
       "format": FORMATS, "rule": RULES, "evaluator kind": EVALUATORS, "step check": STEP_CHECKS,
       "aggregator": AGGREGATORS}


@pytest.fixture
def plug():
    """``plug(registry, name, obj)`` registers a plug-in for one test and takes it out afterwards."""
    added = []

    def add(registry: Registry, name: str, obj):
        assert name not in registry
        added.append((registry, name))
        return registry.register(name, obj)

    yield add
    for registry, name in added:
        registry.entries.pop(name, None)


# -- the resolver ------------------------------------------------------------------------------------------

def test_resolve_names_a_missing_module_and_the_known_names():
    with pytest.raises(ValueError) as err:
        resolve("no_such_module_xyz:f", what="scorer", source="r.yaml", key="search.options.scorer", known=["b", "a"])
    assert str(err.value) == ("r.yaml: search.options.scorer: scorer 'no_such_module_xyz:f': "
                              "no module named 'no_such_module_xyz' (known: a, b)")


def test_resolve_names_a_missing_attribute():
    with pytest.raises(ValueError) as err:
        resolve("treepref.registry:Nope", what="environment")
    assert str(err.value) == "environment 'treepref.registry:Nope': module 'treepref.registry' has no attribute 'Nope'"


def test_resolve_gives_the_first_line_of_an_import_that_fails(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin_xyz.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    (tmp_path / "needs_dep_xyz.py").write_text("import not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EnvError) as err:  # the caller's exception class
        resolve("broken_plugin_xyz:Env", what="environment", error=EnvError)
    assert str(err.value) == ("environment 'broken_plugin_xyz:Env': importing 'broken_plugin_xyz' failed: "
                              "RuntimeError: boom")
    with pytest.raises(ValueError) as err:  # the module exists; what it imports does not
        resolve("needs_dep_xyz:f")
    assert ("importing 'needs_dep_xyz' failed: ModuleNotFoundError: No module named 'not_installed_dep_xyz'"
            in str(err.value))


def test_resolve_refuses_what_is_not_a_spec_and_follows_dotted_attributes():
    with pytest.raises(ValueError, match="step check 'algebra': not a known name nor 'package.module:attr'"):
        resolve("algebra", what="step check")
    assert resolve("treepref.registry:Registry.get") is Registry.get


# -- the registry shape ------------------------------------------------------------------------------------

def test_unknown_name_is_one_line_with_the_known_names():
    reg = Registry("widget", {"b": 1, "a": 2})
    with pytest.raises(ValueError) as err:
        reg.get("c", source="r.yaml", key="x.widget")
    assert str(err.value) == "r.yaml: x.widget: unknown widget 'c' (known: a, b)"
    inline = Registry("widget", {"b": 1}, inline=True, error=EnvError)
    with pytest.raises(EnvError, match=r"unknown widget 'c' \(known: b; or package.module:attr\)"):
        inline.get("c")
    with pytest.raises(ValueError, match="expected a widget name, got 3"):
        reg.get(3)


def test_specs_load_only_when_asked_for(tmp_path, monkeypatch):
    (tmp_path / "lazy_plugin_xyz.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", {"eager": 1})
    reg.register("lazy", "lazy_plugin_xyz:VALUE")
    assert reg.names() == ["eager", "lazy"] and list(reg) == ["eager", "lazy"] and len(reg) == 2
    assert "lazy" in reg and reg.check("lazy") == "lazy"
    assert "lazy_plugin_xyz" not in sys.modules
    assert reg.get("lazy") == 42 and reg["eager"] == 1
    with pytest.raises(ValueError, match="without ':'"):
        reg.register("a:b", 1)


def test_naming_every_registry_imports_no_heavy_backend():
    code = ("import sys, treepref.cli\n"
            "from treepref.registry import Registry\n"
            "from test_registry import ALL\n"
            "assert all(isinstance(r, Registry) and r.names() for r in ALL.values())\n"
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'datasets') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("what", sorted(ALL))
def test_every_registry_lists_its_names_in_its_error(what):
    reg = ALL[what]
    assert reg.names() and all(isinstance(n, str) and ":" not in n for n in reg.names())
    with pytest.raises(ValueError) as err:
        reg.get("no_such_name")
    assert f"unknown {what} 'no_such_name'" in str(err.value)
    assert all(name in str(err.value) for name in reg.names()) and "\n" not in str(err.value)


# -- the coercer -------------------------------------------------------------------------------------------

def test_coerce_message_and_rules():
    with pytest.raises(ConfigError) as err:
        coerce("many", int, source="r.yaml", key="run.concurrency", error=ConfigError)
    assert str(err.value) == "r.yaml: run.concurrency: expected int, got 'many'"
    with pytest.raises(ValueError, match="r.yaml: k: expected float or null, got True"):
        coerce(True, float | None, source="r.yaml", key="k", error=ValueError)  # a bool is never a number
    assert coerce(2, float, source=None, key="k") == 2.0 and isinstance(coerce(2, float, source=None, key="k"), float)
    assert coerce(["a"], tuple[str, ...], source=None, key="k") == ("a",)
    assert coerce(None, int | None, source=None, key="k") is None
    assert coerce("anything", ScriptedPolicy | None, source=None, key="k") == "anything"  # not a YAML type


@pytest.mark.parametrize("check, message", [
    (lambda: config_from_dict({"run": {"concurrency": "many"}}, "r.yaml"),
     "r.yaml: run.concurrency: expected int, got 'many'"),
    (lambda: build_config("beam", {"k": "four"}, "r.yaml"), "r.yaml: search.options.k: expected int, got 'four'"),
    (lambda: build_env("reasoning", {"max_depth": "deep"}, source="r.yaml"),
     "r.yaml: env.options.max_depth: expected int, got 'deep'"),
    (lambda: build_env("shop", {"partial_actions": "yes"}, source="r.yaml"),
     "r.yaml: env.options.partial_actions: expected bool, got 'yes'"),
], ids=["recipe", "search", "env", "agent-env"])
def test_every_option_is_coerced_by_the_one_rule(check, message):
    with pytest.raises(ValueError) as err:
        check()
    assert str(err.value) == message


# -- a user's plug-in in each registry, used by name ---------------------------------------------------------

@dataclass
class GreedyConfig:
    depth: int = 4


async def greedy(problem, ctx, cfg: GreedyConfig | None = None):
    """Follow the first sampled step until the episode ends."""
    cfg = cfg or GreedyConfig()
    tree, states = new_tree(problem, ctx, "greedy", settings_of(cfg))
    node = ROOT
    for _ in range(cfg.depth):
        kids = await expand(tree, states, node, ctx, 1)
        if not kids:
            break
        node = kids[0]
        if tree.is_final(node):
            tree.backup(node, tree.reward[node] or 0.0)
            break
    return tree


GREEDY = Search(greedy, GreedyConfig)
SCRIPT = {(): ["1 + 1 = 2"], ("1 + 1 = 2",): ["The answer is 2."]}


@pytest.mark.parametrize("entry", [GREEDY, "test_registry:GREEDY"], ids=["object", "spec"])
def test_a_registered_search_runs_by_name(plug, entry):
    plug(SEARCHES, "greedy", entry)
    assert get_search("greedy") is greedy and get_config_class("greedy") is GreedyConfig
    cfg = build_config("greedy", {"depth": 3}, "r.yaml")
    tree = asyncio.run(get_search("greedy")(Problem("p1", "What is 1 + 1?", answer="2"), make_ctx(SCRIPT), cfg))
    assert tree.meta["search"] == "greedy" and tree.steps(len(tree.parent) - 1) == ["1 + 1 = 2", "The answer is 2."]
    with pytest.raises(ValueError, match="r.yaml: search.options.depth: expected int, got 'deep'"):
        build_config("greedy", {"depth": "deep"}, "r.yaml")
    assert config_from_dict({"search": {"name": "greedy", "options": {"depth": 2}}}, "r.yaml").search.name == "greedy"


def test_a_search_registered_as_something_else_is_one_line(plug):
    plug(SEARCHES, "broken", "test_registry:greedy")  # the function, not a Search
    with pytest.raises(ValueError, match="search 'broken' is registered as .* not a treepref.search.Search"):
        get_search("broken")


def node_counts(tree, ctx):
    """One row per tree: how many nodes it has."""
    return [Item(row={"problem_id": tree.problem_id, "recipe": ctx.recipe, "nodes": len(tree.parent)},
                 key=tree.problem_id)]


def test_a_registered_format_exports_by_name(plug, tmp_path):
    plug(FORMATS, "node_counts", Format(node_counts, ("problem_id", "recipe", "nodes"), layouts=("standard",)))
    stats = write_export([example_tree()], tmp_path / "out", "node_counts", template=plain_template, recipe="r")
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    assert rows == [{"problem_id": "p1", "recipe": "r", "nodes": len(example_tree().parent)}]
    assert stats["format"] == "node_counts"
    assert config_from_dict({"extract": {"formats": ["node_counts"]}}, "r.yaml").extract.formats == ["node_counts"]


def best_vs_first(tree, parent, children, *, value):
    """The best child against the first created one, when it is worse."""
    valued = [(c, value(tree, c)) for c in children if value(tree, c) is not None]
    if len(valued) < 2:
        return []
    best, first = max(valued, key=lambda cv: cv[1]), valued[0]
    return [Pair(parent, best[0], first[0], best[1], first[1], "best_vs_first")] if best[1] > first[1] else []


def test_a_registered_rule_picks_pairs_by_name(plug):
    plug(RULES, "best_vs_first", best_vs_first)
    ds, stats = export([example_tree()], "step_pairs", template=plain_template, rule="best_vs_first",
                       prefix=None, min_visits=None)
    assert stats["rule"] == "best_vs_first" and set(ds["strategy"]) <= {"best_vs_first"}


class Counting(ReasoningEnv):
    """The reasoning environment under another name, with a problems source of its own."""

    default_problems = "fixed"


def fixed(count=None):
    """A problems source taking only ``count``."""
    problems = [Problem(f"q{i}", f"What is {i} + 1?", answer=str(i + 1)) for i in range(3)]
    return problems[:count], []


def test_a_registered_env_and_source_are_built_by_name(plug):
    plug(ENVS, "counting", Counting)
    plug(SOURCES, "fixed", fixed)
    env = build_env("counting", {"max_depth": 3})
    assert isinstance(env, Counting) and env.max_depth == 3
    assert default_problems("counting") == "fixed"
    problems, errors = build_problems("fixed", count=2)
    assert [p.id for p in problems] == ["q0", "q1"] and errors == []
    cfg = config_from_dict({"env": {"name": "counting"}}, "r.yaml")
    assert cfg.problems.source == "fixed"
    with pytest.raises(EnvError, match="r.yaml: unknown option env.options.colour for environment 'counting'"):
        build_env("counting", {"colour": 1}, source="r.yaml")


def test_an_env_registered_as_a_spec_is_a_users_class(plug):
    plug(ENVS, "guess", "test_env_plugin:GuessNumber")
    assert default_problems("guess") == "seeds"
    assert build_env("guess", {"high": 4}).factory.__name__ == "GuessNumber"
    with pytest.raises(ConfigError, match="r.yaml: env.name: unknown environment 'gues' .*guess"):
        config_from_dict({"env": {"name": "gues"}}, "r.yaml")


def scripted(model=None, script=None):
    """A backend factory: the scripted policy under a name."""
    return ScriptedPolicy(script or {})


def test_a_registered_backend_is_made_by_name(plug):
    plug(BACKENDS, "scripted", scripted)
    assert isinstance(make_policy("scripted", None, script=SCRIPT), ScriptedPolicy)
    assert config_from_dict({"model": {"backend": "scripted"}}, "r.yaml").model.backend == "scripted"


async def quarter(spec, tree, states, nodes, ctx):
    return [spec["v"]] * len(nodes)


def test_a_registered_evaluator_values_nodes_in_a_search(plug):
    plug(EVALUATORS, "quarter", Evaluator((), {"v": 0.25}, quarter))
    assert parse({"kind": "quarter"}) == {"kind": "quarter", "v": 0.25}
    cfg = build_config("mcts", {"simulations": 3, "evaluator": {"kind": "quarter"}}, "r.yaml")
    script = lambda steps: ["The answer is 2."] if steps else ["1 + 1 = 2", "1 + 1 = 3"]  # noqa: E731
    tree = asyncio.run(get_search("mcts")(Problem("p1", "What is 1 + 1?", answer="2"), make_ctx(script), cfg))
    assert any(s.get("quarter") == 0.25 for s in tree.scores)


def never_false(problem, step, prefix):
    return None


def test_a_registered_step_check_and_aggregator_load_by_name(plug):
    plug(STEP_CHECKS, "never_false", never_false)
    assert load_step_check("never_false") is never_false
    assert ReasoningEnv(step_check="never_false")._check is never_false
    plug(AGGREGATORS, "median", lambda xs: sorted(xs)[len(xs) // 2])
    assert get_aggregator("median")([3.0, 1.0, 2.0]) == 2.0
    assert parse({"kind": "steps", "scorer": "treepref.domains.arithmetic:arithmetic_step_scorer",
                  "aggregate": "median"})["aggregate"] == "median"
