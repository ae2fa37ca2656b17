"""A ToolBench-style tool-use environment with small deterministic tools, so agent search runs offline.

The policy writes, per step, ``Thought: ...`` / ``Action: <tool>`` / ``Action Input: <JSON object>`` and
stops at ``Observation:``; the environment appends the tool's result and a fresh ``Thought:``. Tools are
pure functions over shipped tables (``treepref/data/tools/``), so a task's answer is fixed and a tree can
branch anywhere. ``give_answer`` ends the episode with reward 1.0 when the answer matches the task's
``Problem.answer``, 0.0 otherwise; ``give_up`` ends it with 0.0. A call that cannot run (unknown tool, bad
input) returns an error observation and changes nothing, so the policy can correct itself.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import treepref
from treepref.envs.agent import AgentEnv, Outcome
from treepref.problems import Problem

DATA = Path(treepref.__file__).parent / "data" / "tools"

Call = tuple[str, str, str]  # (tool, input as canonical JSON, result)


class ToolError(ValueError):
    """A call that cannot run; its message becomes the observation."""


# -- number formatting and answers ----------------------------------------------------------------

def fmt(x: float | int) -> str:
    """A number as a tool prints it: integers without a point, others to 10 significant digits."""
    if isinstance(x, int) or (math.isfinite(x) and x == int(x) and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.10g}"


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def as_number(text: str) -> float | None:
    """The number a text states: the whole text, else its last number (``"about 26.1 mi"`` -> 26.1)."""
    cleaned = re.sub(r"(?<=\d),(?=\d{3})", "", str(text)).strip()
    try:
        return float(cleaned)
    except ValueError:
        found = _NUMBER.findall(cleaned)
        return float(found[-1]) if found else None


def answers_match(given: str, reference: str, rel_tol: float = 1e-2) -> bool:
    """Numeric references within ``rel_tol`` (relative), others case-insensitively after stripping."""
    ref = as_number(reference) if _NUMBER.fullmatch(reference.strip()) else None
    if ref is not None:
        got = as_number(given)
        return got is not None and abs(got - ref) <= rel_tol * max(abs(ref), 1.0)
    norm = lambda s: " ".join(str(s).strip().strip(".\"'").split()).casefold()  # noqa: E731
    return norm(given) == norm(reference)


# -- calculator -----------------------------------------------------------------------------------

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ToolError("exponent too large (at most 100)")
        try:
            out = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
        if isinstance(out, complex) or abs(out) > 1e100:
            raise ToolError("result is not a real number of sensible size")
        return out
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise ToolError(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")


def calculator(expression: str) -> str:
    """Evaluate arithmetic without ``eval``: the parsed expression may hold only numbers and operators."""
    text = str(expression).replace("^", "**").replace("×", "*").replace("÷", "/").strip()
    if not text:
        raise ToolError("empty expression")
    if len(text) > 200:
        raise ToolError("expression too long (at most 200 characters)")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot parse expression {expression!r}") from None
    return fmt(_eval(tree))


# -- unit conversion ------------------------------------------------------------------------------

# unit -> (dimension, factor to the dimension's base unit: m, kg, l); temperature is affine, done apart
UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001), "cm": ("length", 0.01), "m": ("length", 1.0), "km": ("length", 1000.0),
    "in": ("length", 0.0254), "ft": ("length", 0.3048), "yd": ("length", 0.9144), "mi": ("length", 1609.344),
    "mg": ("mass", 1e-6), "g": ("mass", 0.001), "kg": ("mass", 1.0), "t": ("mass", 1000.0),
    "oz": ("mass", 0.028349523125), "lb": ("mass", 0.45359237),
    "ml": ("volume", 0.001), "l": ("volume", 1.0), "m3": ("volume", 1000.0),
    "gal": ("volume", 3.785411784), "qt": ("volume", 0.946352946), "pt": ("volume", 0.473176473),
    "c": ("temperature", 0.0), "f": ("temperature", 0.0), "k": ("temperature", 0.0),
}
ALIASES = {
    "millimeter": "mm", "centimeter": "cm", "meter": "m", "metre": "m", "kilometer": "km", "kilometre": "km",
    "inch": "in", "inches": "in", "foot": "ft", "feet": "ft", "yard": "yd", "mile": "mi",
    "milligram": "mg", "gram": "g", "kilogram": "kg", "tonne": "t", "ounce": "oz", "pound": "lb", "lbs": "lb",
    "milliliter": "ml", "millilitre": "ml", "liter": "l", "litre": "l", "cubic meter": "m3", "m^3": "m3",
    "gallon": "gal", "quart": "qt", "pint": "pt",
    "celsius": "c", "°c": "c", "fahrenheit": "f", "°f": "f", "kelvin": "k",
}


def unit(name: str) -> str:
    """The table's name for a unit, accepting plurals and spelled-out names in any case."""
    key = str(name).strip().lower().replace("degrees ", "")
    for cand in (key, key.removesuffix("s"), key.removesuffix("es")):
        if cand in UNITS:
            return cand
        if cand in ALIASES:
            return ALIASES[cand]
    raise ToolError(f"unknown unit {name!r}; known units: {', '.join(UNITS)}")


def _to_kelvin(x: float, u: str) -> float:
    return {"c": x + 273.15, "f": (x - 32) * 5 / 9 + 273.15, "k": x}[u]


def _from_kelvin(x: float, u: str) -> float:
    return {"c": x - 273.15, "f": (x - 273.15) * 9 / 5 + 32, "k": x}[u]


def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (same dimension only)."""
    if isinstance(value, str):
        num = as_number(value)
        if num is None:
            raise ToolError(f"value must be a number, got {value!r}")
        value = num
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"value must be a number, got {value!r}")
    a, b = unit(from_unit), unit(to_unit)
    (da, fa), (db, fb) = UNITS[a], UNITS[b]
    if da != db:
        raise ToolError(f"cannot convert {da} ({a}) to {db} ({b})")
    if da == "temperature":
        return _from_kelvin(_to_kelvin(float(value), a), b)
    return value * fa / fb


# -- lookup ---------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def shipped_tables() -> dict[str, dict[str, dict[str, Any]]]:
    """The shipped tables: table -> row name -> field -> value (rows keyed by name)."""
    data = json.loads((DATA / "tables.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def find_row(rows: dict[str, dict], key: Any) -> str | None:
    """The row named ``key``, or the one row that has ``key`` as a field value (a symbol, an atomic number)."""
    want = str(key).strip().casefold()
    for name in rows:
        if name.casefold() == want:
            return name
    hits = [name for name, row in rows.items() if any(str(v).casefold() == want for v in row.values())]
    return hits[0] if len(hits) == 1 else None


def lookup(tables: dict, table: str, key: Any, field: str | None = None) -> str:
    """One field of one row (or the whole row as JSON when ``field`` is left out)."""
    names = {t.casefold(): t for t in tables}
    t = names.get(str(table).strip().casefold())
    if t is None:
        raise ToolError(f"unknown table {table!r}; tables: {', '.join(tables)}")
    rows = tables[t]
    name = find_row(rows, key)
    if name is None:
        raise ToolError(f"no row {key!r} in table {t!r}; rows: {', '.join(rows)}")
    row = rows[name]
    if field is None or str(field).strip() == "":
        return json.dumps({"name": name, **row}, ensure_ascii=False)
    fields = {f.casefold(): f for f in row}
    f = fields.get(str(field).strip().casefold())
    if f is None:
        raise ToolError(f"no field {field!r} in table {t!r}; fields: {', '.join(row)}")
    value = row[f]
    return fmt(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# -- tools and action parsing ---------------------------------------------------------------------

@dataclass(frozen=True)
class Tool:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    description: str = ""


TOOLS = {t.name: t for t in (
    Tool("calculator", ("expression",), (), "evaluate arithmetic, e.g. {\"expression\": \"(3 + 4) * 2\"}"),
    Tool("convert_units", ("value", "from", "to"), (),
         "convert length/mass/volume/temperature, e.g. {\"value\": 3, \"from\": \"km\", \"to\": \"mi\"}"),
    Tool("lookup", ("table", "key"), ("field",),
         "read a table (countries, elements, planets), e.g. "
         "{\"table\": \"countries\", \"key\": \"France\", \"field\": \"capital\"}"),
    Tool("give_answer", ("answer",), (), "finish with the final answer, e.g. {\"answer\": \"Paris\"}"),
    Tool("give_up", (), (), "finish without an answer: {}"),
)}
ARG_ALIASES = {"from_unit": "from", "to_unit": "to", "final_answer": "answer", "expr": "expression",
               "name": "key", "row": "key", "column": "field"}
TOOL_LIST = ", ".join(TOOLS)


@dataclass(frozen=True)
class Action:
    thought: str
    tool: str
    args: dict


def parse_action(text: str) -> Action:
    """Read ``[Thought: ...] Action: name / Action Input: {...}`` leniently; raise ToolError saying why not."""
    m = re.search(r"^\s*Action\s*:\s*(.*)$", text, re.MULTILINE | re.IGNORECASE)
    if m is None:
        raise ToolError("no 'Action:' line (write 'Action: <tool>' then 'Action Input: {...}')")
    thought = re.sub(r"^\s*Thought\s*:\s*", "", text[: m.start()], flags=re.IGNORECASE).strip()
    tool = m.group(1).strip().strip("`'\"").strip()
    rest = text[m.end():]
    inp = re.search(r"^\s*Action\s*Input\s*:\s*", rest, re.MULTILINE | re.IGNORECASE)
    raw = rest[inp.end():].strip() if inp else ""
    if tool.lower() == "finish":  # ToolBench's own finishing call
        args = _parse_input(raw, None)
        if "give_up" in str(args.get("return_type", "")):
            return Action(thought, "give_up", {})
        return Action(thought, "give_answer", {"answer": args.get("final_answer", args.get("answer", ""))})
    spec = TOOLS.get(tool.lower())
    if spec is None:
        raise ToolError(f"unknown tool {tool!r}")
    known = spec.required + spec.optional
    args = {(ARG_ALIASES[k] if ARG_ALIASES.get(k) in known else k): v for k, v in _parse_input(raw, spec).items()}
    missing = [a for a in spec.required if a not in args]
    extra = [a for a in args if a not in known]
    if missing or extra:
        why = "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                      extra and f"unexpected {', '.join(extra)}"]))
        raise ToolError(f"bad input for {spec.name} ({why}); it takes {', '.join(known) or 'nothing'}")
    return Action(thought, spec.name, args)


def _parse_input(raw: str, spec: Tool | None) -> dict:
    raw = re.sub(r"^```(?:json)?\s*|\s*```$", "", raw.strip())
    if not raw:
        return {}
    if raw.startswith("{"):
        try:
            value, _ = json.JSONDecoder().raw_decode(raw)
        except json.JSONDecodeError as e:
            raise ToolError(f"Action Input is not valid JSON ({e.msg})") from None
    else:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip("'\"")
    if isinstance(value, dict):
        return value
    if spec is not None and len(spec.required) == 1:  # a bare value for a one-argument tool
        return {spec.required[0]: value if isinstance(value, str) else json.dumps(value)}
    raise ToolError("Action Input must be a JSON object")


def run_tool(tool: str, args: dict, tables: dict) -> str:
    """The result text of a non-finishing tool call (raises ToolError)."""
    if tool == "calculator":
        return calculator(args["expression"])
    if tool == "convert_units":
        return fmt(convert_units(args["value"], args["from"], args["to"]))
    if tool == "lookup":
        return lookup(tables, args["table"], args["key"], args.get("field"))
    raise ToolError(f"unknown tool {tool!r}")


SYSTEM = (
    "Answer the question by calling tools. Each turn, write exactly:\n"
    "Thought: <your reasoning>\nAction: <tool name>\nAction Input: <JSON object>\n"
    "then stop; the tool's result comes after 'Observation:'. Tools:\n"
    + "\n".join(f"- {t.name}: {t.description}" for t in TOOLS.values())
    + "\nFinish with give_answer (just the answer, numbers without units) or give_up."
)


@dataclass(frozen=True)
class ToolData:
    """The environment's data: the task's reference answer and the successful calls so far."""

    answer: str | None
    calls: tuple[Call, ...] = ()


@dataclass
class ToolEnv(AgentEnv):
    """The tools environment over the shipped tables (``tables`` None) or a caller's own."""

    max_depth: int = 6
    reward_range: tuple[float, float] = (0.0, 1.0)
    default_system: str = SYSTEM
    stop: tuple[str, ...] = ("Observation:",)
    lead: str = "Thought:"
    observation_format: str = " {observation}\n"
    rel_tol: float = 1e-2  # numeric answers within this relative tolerance are right
    demos: int = 2  # worked tasks before the problem: one lookup, one chain of tools
    tables: dict | None = None

    name = "tools"
    default_problems = "tools"  # the problems source a recipe naming it gets by default
    interactive = True

    def demonstrations(self, problem: Problem) -> list[tuple[Problem, list[str]]]:
        """Worked tasks (``_demo_tasks``: one of the problem's own kind, then one that chains tools), each
        solved by its reference tool calls with a short thought; the last one shown is the closest."""
        demos = _demo_tasks(problem, self.demos)[::-1]
        return [(demo, [f" I should call {tool}.\nAction: {tool}\nAction Input: {json.dumps(args)}\n"
                        for tool, args in demo.meta["solution"]]) for demo in demos]

    def sample_actions(self, state) -> list[str]:
        """Actions worth trying at ``state`` (for ``treepref check-env``): a tool call of each kind and both
        finishing calls."""
        calls = [("calculator", {"expression": "(3 + 4) * 2"}), ("convert_units", {"value": 3, "from": "km", "to": "mi"}),
                 ("lookup", {"table": "countries", "key": "France", "field": "capital"}),
                 ("give_answer", {"answer": str(state.data.answer)}), ("give_answer", {"answer": "0"}), ("give_up", {})]
        return [f" think\nAction: {tool}\nAction Input: {json.dumps(args)}\n" for tool, args in calls]

    def start(self, problem: Problem) -> tuple[ToolData, str]:
        return ToolData(problem.answer), ""

    def task_text(self, problem: Problem, observation: str) -> str:
        return problem.question.rstrip() + "\n"

    def act(self, data: ToolData, action: str) -> Outcome:
        try:
            a = parse_action(action)
            if a.tool == "give_up":
                return Outcome(data, "gave up", 0.0, True, info={"tool": a.tool, "gave_up": True, "success": False})
            if a.tool == "give_answer":
                return self._finish(data, str(a.args["answer"]))
            result = run_tool(a.tool, a.args, shipped_tables() if self.tables is None else self.tables)
        except ToolError as e:
            return Outcome(data, f"Error: {e}. Tools: {TOOL_LIST}.", info={"error": str(e)})
        call = (a.tool, json.dumps(a.args, sort_keys=True, ensure_ascii=False), result)
        return Outcome(ToolData(data.answer, data.calls + (call,)), result, info={"tool": a.tool})

    def _finish(self, data: ToolData, answer: str) -> Outcome:
        info = {"tool": "give_answer", "answer": answer}
        if data.answer is None:  # nothing to judge against
            return Outcome(data, answer, None, True, info={**info, "success": None})
        reward = 1.0 if answers_match(answer, data.answer, self.rel_tol) else 0.0
        return Outcome(data, answer, reward, True, info={**info, "success": reward == 1.0})


# -- tasks ----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _shipped_tasks() -> tuple[Problem, ...]:
    rows = [json.loads(line) for line in (DATA / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return tuple(Problem(id=r["id"], prompt=r["prompt"], answer=str(r["answer"]),
                         meta={"kind": r["kind"], "solution": r["solution"]}) for r in rows)


def _demo_tasks(problem: Problem, n: int) -> list[Problem]:
    """``n`` worked tasks for ``problem``: shipped tasks of its kind first (matched examples, the way the
    arithmetic domain matches its worked examples), then ones that chain tools; never the problem itself."""
    others = [t for t in _shipped_tasks() if t.id != problem.id]
    kind = problem.meta.get("kind") if problem.meta else None
    same = [t for t in others if t.meta["kind"] == kind]
    chains = [t for t in others if len(t.meta["solution"]) >= 3 and t.meta["kind"] != kind]
    return (same[:1] + chains[:1] + same[1:])[:n] if same else chains[:n]


def load_tasks(count: int | None = None, seed: int = 0, kinds: list[str] | None = None,
               skip: int = 0) -> list[Problem]:
    """The shipped tasks (``tasks.jsonl``) in an order shuffled by ``seed``, the first ``count`` of them after the
    first ``skip`` (held-out tasks: ``skip`` = another recipe's ``count`` at the same seed and kinds); ``kinds``
    keeps only those kinds (e.g. ``["capital", "symbol"]``: one lookup each)."""
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
    rows = [json.loads(line) for line in (DATA / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    if kinds:
        unknown = sorted(set(kinds) - {r["kind"] for r in rows})
        if unknown:
            raise ValueError(f"unknown task kind(s) {unknown}; the shipped kinds: "
                             f"{', '.join(sorted({r['kind'] for r in rows}))}")
        rows = [r for r in rows if r["kind"] in kinds]
    random.Random(seed).shuffle(rows)
    problems = [Problem(id=r["id"], prompt=r["prompt"], answer=str(r["answer"]),
                        meta={k: v for k, v in r.items() if k not in ("id", "prompt", "answer")}) for r in rows]
    problems = problems[skip:]
    return problems if count is None else problems[:count]
