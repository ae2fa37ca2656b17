"""The tools environment: each tool on hand-checked inputs, the transcript it keeps, and its shipped tasks."""

from __future__ import annotations

import asyncio
import json

import pytest

from treepref.envs.tools import (DATA, ToolData, ToolEnv, ToolError, answers_match, calculator, convert_units,
                                 load_tasks, lookup, parse_action, shipped_tables)
from treepref.problems import Problem
from treepref.tokens import PLAIN

ENV = ToolEnv()
TASK = Problem("t", "How many miles is 42 km? Round to 2 decimal places.", answer="26.1")


def act(action: str, data: ToolData | None = None, answer: str | None = "26.1"):
    return ENV.act(ToolData(answer) if data is None else data, action)


def call(tool: str, args) -> str:
    return f"Action: {tool}\nAction Input: {args if isinstance(args, str) else json.dumps(args)}"


def step(state, action: str):
    return asyncio.run(ENV.step(state, action, token_ids=PLAIN.encode(action)))


# -- the tools ------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, want", [("1 + 2 * 3", "7"), ("(1 + 2) * 3", "9"), ("7 / 2", "3.5"), ("2 ** 10", "1024"),
                                        ("2^3", "8"), ("-4 + 1.5", "-2.5"), ("17 // 5", "3"), ("17 % 5", "2"),
                                        ("0.1 + 0.2", "0.3"), ("68000000 / 551695", "123.2565095")])
def test_calculator(expr, want):
    assert calculator(expr) == want


@pytest.mark.parametrize("expr", ["__import__('os').system('ls')", "x + 1", "abs(-1)", "(1).real", "'a' * 3",
                                  "[1, 2]", "1 if 1 else 2", "lambda: 1", "True + 1", "9 ** 9 ** 9", "1 / 0", "",
                                  "1 +", "2 ** 0.5 * (-1) ** 0.5"])
def test_calculator_refuses_unsafe_or_bad_input(expr):
    with pytest.raises(ToolError):
        calculator(expr)


@pytest.mark.parametrize("value, a, b, want", [
    (42, "km", "mi", 26.0976), (1, "mi", "ft", 5280.0), (1, "in", "cm", 2.54), (1, "lb", "oz", 16.0),
    (2.5, "kg", "g", 2500.0), (1, "gal", "l", 3.7854), (100, "C", "F", 212.0), (32, "fahrenheit", "celsius", 0.0),
    (0, "c", "k", 273.15), (3, "kilometers", "meters", 3000.0)])
def test_convert_units(value, a, b, want):
    assert convert_units(value, a, b) == pytest.approx(want, abs=1e-4)


def test_convert_units_refuses_mixed_dimensions_and_unknown_units():
    with pytest.raises(ToolError, match="cannot convert"):
        convert_units(1, "kg", "km")
    with pytest.raises(ToolError, match="unknown unit"):
        convert_units(1, "furlong", "m")
    with pytest.raises(ToolError, match="number"):
        convert_units("lots", "m", "km")


def test_lookup_by_name_by_value_and_whole_rows():
    t = shipped_tables()
    assert lookup(t, "countries", "France", "capital") == "Paris"
    assert lookup(t, "Countries", "france", "Population") == "68000000"
    assert lookup(t, "elements", "26", "symbol") == "Fe"  # a row found by a unique field value
    assert lookup(t, "elements", "Au", "atomic_mass") == "196.97"
    assert lookup(t, "planets", "Mars", "moons") == "2"
    assert json.loads(lookup(t, "planets", "Earth"))["moons"] == 1
    for args, why in [(("cities", "Paris", "x"), "unknown table"), (("countries", "Atlantis", "capital"), "no row"),
                      (("countries", "France", "anthem"), "no field")]:
        with pytest.raises(ToolError, match=why):
            lookup(t, *args)


# -- actions --------------------------------------------------------------------------------------

def test_parse_action_is_lenient():
    a = parse_action('Thought: convert it\nAction: convert_units\nAction Input: {"value": 3, "from": "km", "to": "mi"}')
    assert (a.thought, a.tool, a.args) == ("convert it", "convert_units", {"value": 3, "from": "km", "to": "mi"})
    assert parse_action("Action: calculator\nAction Input: 2 + 2").args == {"expression": "2 + 2"}  # bare input
    assert parse_action('Action: `give_answer`\nAction Input: "Paris"').args == {"answer": "Paris"}
    assert parse_action('Action: give_answer\nAction Input: {"answer": 3} trailing').args == {"answer": 3}
    assert parse_action("Action: give_up\nAction Input: {}").tool == "give_up"
    assert parse_action("Action: give_up").tool == "give_up"
    assert parse_action('Action: lookup\nAction Input: ```json\n{"table": "planets", "key": "Mars"}\n```').args == {
        "table": "planets", "key": "Mars"}
    assert parse_action('Action: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "7"}').args == {
        "answer": "7"}


def test_a_tool_call_adds_to_the_data_and_shows_its_result():
    out = act(call("lookup", {"table": "countries", "key": "Japan", "field": "capital"}))
    assert out.observation == "Tokyo" and not out.terminated and out.reward is None
    assert out.data.calls == (("lookup", '{"field": "capital", "key": "Japan", "table": "countries"}', "Tokyo"),)
    out2 = ENV.act(out.data, call("calculator", {"expression": "6 * 7"}))
    assert out2.data.calls[0] == out.data.calls[0] and out2.data.calls[1][2] == "42"


@pytest.mark.parametrize("answer, reward", [("26.1", 1.0), ("26.10", 1.0), ("26.2", 1.0), ("about 26.1 miles", 1.0),
                                            ("26.5", 0.0), ("27", 0.0), ("Paris", 0.0)])
def test_give_answer_numeric_tolerance(answer, reward):
    out = act(call("give_answer", {"answer": answer}))
    assert out.terminated and out.reward == reward and out.info["success"] is (reward == 1.0)


def test_give_answer_strings_and_no_reference():
    assert act(call("give_answer", {"answer": "  paris. "}), answer="Paris").reward == 1.0
    assert act(call("give_answer", {"answer": "Lyon"}), answer="Paris").reward == 0.0
    out = act(call("give_answer", {"answer": "Lyon"}), answer=None)
    assert out.terminated and out.reward is None and out.info["success"] is None
    assert answers_match("1,371,000,000", "1371000000") and not answers_match("1", "2")


def test_give_up():
    out = act(call("give_up", {}))
    assert out.terminated and out.reward == 0.0 and out.info["gave_up"] is True and out.info["success"] is False


@pytest.mark.parametrize("action, says", [
    ("I think the answer is 26.", "no 'Action:'"),
    ("Action: search\nAction Input: {}", "unknown tool 'search'"),
    ("Action: calculator\nAction Input: {\"expression\": ", "not valid JSON"),
    ("Action: lookup\nAction Input: {\"table\": \"countries\"}", "missing key"),
    ("Action: calculator\nAction Input: {\"expression\": \"1\", \"mode\": 2}", "unexpected mode"),
    ("Action: lookup\nAction Input: France", "JSON object"),
    ("Action: calculator\nAction Input: {\"expression\": \"open('x')\"}", "not Call"),
    ("Action: convert_units\nAction Input: {\"value\": 1, \"from\": \"kg\", \"to\": \"m\"}", "cannot convert"),
])
def test_malformed_actions_change_nothing_and_say_why(action, says):
    data = act(call("calculator", "1 + 1")).data
    out = ENV.act(data, action)
    assert out.data == data and not out.terminated and not out.truncated and out.reward is None
    assert says in out.observation and "give_answer" in out.observation  # names the problem and the tools


# -- the transcript -------------------------------------------------------------------------------

ACTIONS = [' Convert.\nAction: convert_units\nAction Input: {"value": 42, "from": "km", "to": "mi"}\nObservation:',
           "Oops.\nAction: nothing\nAction Input: {}\nObservation:",
           ' Done.\nAction: give_answer\nAction Input: {"answer": "26.10"}\nObservation:']


def test_the_transcript_grows_by_action_and_observation_and_ends_on_an_answer():
    s = ENV.initial(TASK)
    assert s.text.endswith("<assistant>\nThought:") and "convert_units" in s.text and TASK.prompt in s.text
    assert list(s.token_ids) == PLAIN.encode(s.text)
    for i, action in enumerate(ACTIONS):
        tr = step(s, action)
        assert tr.state.text.startswith(s.text) and tr.state.token_ids[: len(s.token_ids)] == s.token_ids
        assert tr.state.text == s.text + action + tr.observation
        assert PLAIN.decode(tr.state.token_ids) == tr.state.text
        s = tr.state
    assert tr.terminated and tr.reward == 1.0 and tr.info["success"] and tr.observation == ""
    assert "Observation: 26.09759007\nThought:" in s.text
    assert s.steps[0].startswith("Convert.") and not s.steps[0].endswith("Observation:")


def test_steps_are_deterministic_and_states_immutable():
    s = ENV.initial(TASK)
    first, again = step(s, ACTIONS[0]), step(s, ACTIONS[0])
    assert first.state == again.state and first.info == again.info and first.observation == again.observation
    assert s == ENV.initial(TASK) and s.data == ToolData("26.1")
    with pytest.raises(AttributeError):
        first.state.data.calls = ()  # frozen


def test_max_depth_truncates():
    env = ToolEnv(max_depth=2)
    s = env.initial(TASK)
    a = "Action: calculator\nAction Input: 1 + 1\nObservation:"
    t1 = asyncio.run(env.step(s, a))
    t2 = asyncio.run(env.step(t1.state, a))
    assert not t1.truncated and t2.truncated and not t2.terminated and t2.observation == ""


# -- the shipped tasks ----------------------------------------------------------------------------

def test_load_tasks():
    tasks = load_tasks()
    assert len(tasks) >= 50 and len({t.id for t in tasks}) == len(tasks)
    assert all(t.answer and t.prompt for t in tasks)
    assert [t.id for t in load_tasks(5, seed=3)] == [t.id for t in load_tasks(seed=3)[:5]]
    assert [t.id for t in load_tasks(seed=1)] != [t.id for t in load_tasks(seed=2)]
    assert {t.meta["kind"] for t in tasks} >= {"capital", "density", "convert", "mass_times"}


def test_every_task_is_solved_by_its_reference_calls():
    for task in load_tasks():
        s = ENV.initial(task)
        calls = task.meta["solution"]
        assert 1 <= len(calls) - 1 <= 3  # 1-3 tool calls, then the answer
        for tool, args in calls:
            tr = step(s, f"Thought: go\n{call(tool, args)}\nObservation:")
            assert "error" not in tr.info, (task.id, tr.info)
            s = tr.state
        assert tr.terminated and tr.reward == 1.0, task.id


def test_some_answers_recomputed_by_hand():
    by_prompt = {t.prompt: t.answer for t in load_tasks()}
    assert by_prompt["How many miles is 42 km? Round to 2 decimal places."] == "26.1"
    assert by_prompt["What is the capital of Japan?"] == "Tokyo"
    t = shipped_tables()
    density = float(calculator(f"{lookup(t, 'countries', 'Spain', 'population')} / "
                               f"{lookup(t, 'countries', 'Spain', 'area_km2')}"))
    assert by_prompt["What is the population density of Spain in people per km²? Round to the nearest integer."] \
        == str(round(density)) == "95"
    mass = float(lookup(t, "elements", "26", "atomic_mass")) * 3
    prompt = "What is the atomic mass of the element with atomic number 26 times 3? Round to 2 decimal places."
    assert float(by_prompt[prompt]) == pytest.approx(mass, abs=0.006)
    assert (DATA / "tables.json").is_file()
