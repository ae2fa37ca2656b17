"""Generate the tools environment's tables and tasks (``treepref/data/tools/``), deterministically.

Every task is built with a reference solution: the tool calls that answer it, run through the environment's
own tool functions, so a task's answer is right by construction (``meta.solution`` keeps the calls). Table
figures are rounded public values (populations about 2023); the tasks only need them to be consistent.

Run ``python scripts/make_tools_data.py`` (optionally ``--out DIR``); it writes the same bytes every time.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from treepref.envs.tools import calculator, convert_units, fmt, lookup

SEED = 7
OUT = Path(__file__).resolve().parent.parent / "treepref" / "data" / "tools"

# name: capital, population, area_km2, currency
_COUNTRIES = [
    ("France", "Paris", 68_000_000, 551_695, "euro"), ("Germany", "Berlin", 84_000_000, 357_588, "euro"),
    ("Italy", "Rome", 59_000_000, 301_340, "euro"), ("Spain", "Madrid", 48_000_000, 505_990, "euro"),
    ("Portugal", "Lisbon", 10_400_000, 92_212, "euro"), ("Netherlands", "Amsterdam", 17_900_000, 41_850, "euro"),
    ("Poland", "Warsaw", 37_000_000, 312_696, "zloty"), ("Sweden", "Stockholm", 10_500_000, 450_295, "krona"),
    ("Norway", "Oslo", 5_500_000, 385_207, "krone"),
    ("United Kingdom", "London", 68_000_000, 243_610, "pound sterling"),
    ("Japan", "Tokyo", 125_000_000, 377_975, "yen"), ("South Korea", "Seoul", 51_700_000, 100_210, "won"),
    ("China", "Beijing", 1_410_000_000, 9_596_961, "renminbi"),
    ("India", "New Delhi", 1_430_000_000, 3_287_263, "rupee"),
    ("Egypt", "Cairo", 112_000_000, 1_001_450, "Egyptian pound"), ("Kenya", "Nairobi", 55_000_000, 580_367, "shilling"),
    ("Nigeria", "Abuja", 224_000_000, 923_768, "naira"), ("Brazil", "Brasilia", 216_000_000, 8_515_767, "real"),
    ("Argentina", "Buenos Aires", 46_000_000, 2_780_400, "peso"), ("Peru", "Lima", 34_000_000, 1_285_216, "sol"),
    ("Mexico", "Mexico City", 129_000_000, 1_964_375, "peso"), ("Canada", "Ottawa", 40_000_000, 9_984_670, "dollar"),
    ("Australia", "Canberra", 26_500_000, 7_692_024, "dollar"),
]
# name: symbol, atomic_number, atomic_mass (standard atomic weights, rounded)
_ELEMENTS = [
    ("Hydrogen", "H", 1, 1.008), ("Helium", "He", 2, 4.0026), ("Lithium", "Li", 3, 6.94), ("Carbon", "C", 6, 12.011),
    ("Nitrogen", "N", 7, 14.007), ("Oxygen", "O", 8, 15.999), ("Fluorine", "F", 9, 18.998), ("Neon", "Ne", 10, 20.18),
    ("Sodium", "Na", 11, 22.99), ("Magnesium", "Mg", 12, 24.305), ("Aluminium", "Al", 13, 26.982),
    ("Silicon", "Si", 14, 28.085), ("Phosphorus", "P", 15, 30.974), ("Sulfur", "S", 16, 32.06),
    ("Chlorine", "Cl", 17, 35.45), ("Argon", "Ar", 18, 39.948), ("Potassium", "K", 19, 39.098),
    ("Calcium", "Ca", 20, 40.078), ("Iron", "Fe", 26, 55.845), ("Copper", "Cu", 29, 63.546), ("Zinc", "Zn", 30, 65.38),
    ("Silver", "Ag", 47, 107.87), ("Tin", "Sn", 50, 118.71), ("Gold", "Au", 79, 196.97), ("Mercury", "Hg", 80, 200.59),
    ("Lead", "Pb", 82, 207.2), ("Uranium", "U", 92, 238.03),
]
# name: diameter_km, moons (about 2023), distance_from_sun_million_km, orbital_period_days
_PLANETS = [
    ("Mercury", 4879, 0, 57.9, 88.0), ("Venus", 12104, 0, 108.2, 224.7), ("Earth", 12756, 1, 149.6, 365.2),
    ("Mars", 6792, 2, 228.0, 687.0), ("Jupiter", 142984, 95, 778.5, 4331.0), ("Saturn", 120536, 146, 1432.0, 10747.0),
    ("Uranus", 51118, 28, 2867.0, 30589.0), ("Neptune", 49528, 16, 4515.0, 59800.0),
]

TABLES = {
    "_note": "Rounded public figures; populations are approximate (about 2023). Tasks are built from these.",
    "countries": {n: {"capital": c, "population": p, "area_km2": a, "currency": cur} for n, c, p, a, cur in _COUNTRIES},
    "elements": {n: {"symbol": s, "atomic_number": z, "atomic_mass": m} for n, s, z, m in _ELEMENTS},
    "planets": {n: {"diameter_km": d, "moons": k, "distance_from_sun_million_km": r, "orbital_period_days": t}
                for n, d, k, r, t in _PLANETS},
}


class Solver:
    """Runs a reference solution's calls through the tool functions and keeps them."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def look(self, table: str, key: str, field: str) -> str:
        self.calls.append(["lookup", {"table": table, "key": key, "field": field}])
        return lookup(TABLES, table, key, field)

    def calc(self, expression: str) -> str:
        self.calls.append(["calculator", {"expression": expression}])
        return calculator(expression)

    def convert(self, value: float, a: str, b: str) -> float:
        self.calls.append(["convert_units", {"value": value, "from": a, "to": b}])
        return convert_units(value, a, b)

    def answer(self, value: str) -> str:
        self.calls.append(["give_answer", {"answer": value}])
        return value


def rounded(x: float | str, places: int) -> str:
    return fmt(round(float(x)) if places == 0 else round(float(x), places))


def make_tasks() -> list[dict]:
    rng = random.Random(SEED)
    countries = [c[0] for c in _COUNTRIES]
    elements, planets = [e[0] for e in _ELEMENTS], [p[0] for p in _PLANETS]
    tasks: list[dict] = []

    def pairs(items: list[str], n: int, key=None) -> list[tuple[str, str]]:
        """``n`` distinct unordered pairs, each ordered by ``key`` descending when given."""
        out: list[tuple[str, str]] = []
        while len(out) < n:
            a, b = rng.sample(items, 2)
            if key is not None and key(a) < key(b):
                a, b = b, a
            if (a, b) not in out and (b, a) not in out:
                out.append((a, b))
        return out

    def add(kind: str, prompt: str, build) -> None:
        s = Solver()
        answer = s.answer(build(s))
        tasks.append({"id": f"tools-{len(tasks) + 1:03d}", "prompt": prompt, "answer": answer, "kind": kind,
                      "solution": s.calls})

    for c in rng.sample(countries, 6):
        add("capital", f"What is the capital of {c}?", lambda s, c=c: s.look("countries", c, "capital"))
    for c in rng.sample(countries, 8):
        add("density", f"What is the population density of {c} in people per km²? Round to the nearest integer.",
            lambda s, c=c: rounded(s.calc(f"{s.look('countries', c, 'population')} / "
                                          f"{s.look('countries', c, 'area_km2')}"), 0))
    for a, b in pairs(countries, 5, key=lambda n: TABLES["countries"][n]["population"]):
        add("population_gap", f"How many more people live in {a} than in {b}?",
            lambda s, a=a, b=b: s.calc(f"{s.look('countries', a, 'population')} - "
                                       f"{s.look('countries', b, 'population')}"))
    for a, b in pairs(countries, 3):
        add("larger_population", f"Which country has the larger population, {a} or {b}?",
            lambda s, a=a, b=b: a if float(s.look("countries", a, "population"))
            > float(s.look("countries", b, "population")) else b)
    conversions = [(42, "km", "mi", "miles", 2), (26.2, "mi", "km", "kilometers", 2), (150, "lb", "kg", "kilograms", 2),
                   (5, "gal", "l", "liters", 2), (6, "ft", "m", "meters", 3), (100, "f", "c", "degrees Celsius", 1),
                   (37, "c", "f", "degrees Fahrenheit", 1), (16, "oz", "g", "grams", 1)]
    names = {"km": "km", "mi": "miles", "lb": "pounds", "gal": "US gallons", "ft": "feet", "f": "°F", "c": "°C",
             "oz": "ounces"}
    for v, a, b, bname, places in conversions:
        add("convert", f"How many {bname} is {fmt(v)} {names[a]}? Round to {places} decimal place"
            f"{'s' if places > 1 else ''}.", lambda s, v=v, a=a, b=b, p=places: rounded(s.convert(v, a, b), p))
    for e in rng.sample(elements, 6):
        z = TABLES["elements"][e]["atomic_number"]
        add("symbol", f"What is the chemical symbol of the element with atomic number {z}?",
            lambda s, z=z: s.look("elements", str(z), "symbol"))
    for e in rng.sample(elements, 6):
        z, n = TABLES["elements"][e]["atomic_number"], rng.randint(2, 9)
        add("mass_times", f"What is the atomic mass of the element with atomic number {z} times {n}? "
            "Round to 2 decimal places.",
            lambda s, z=z, n=n: rounded(s.calc(f"{s.look('elements', str(z), 'atomic_mass')} * {n}"), 2))
    molecules = [("water (H2O)", {"Hydrogen": 2, "Oxygen": 1}), ("carbon dioxide (CO2)", {"Carbon": 1, "Oxygen": 2}),
                 ("table salt (NaCl)", {"Sodium": 1, "Chlorine": 1}), ("methane (CH4)", {"Carbon": 1, "Hydrogen": 4})]
    for label, parts in molecules:
        add("molar_mass", f"What is the molar mass of {label} in g/mol? Round to 2 decimal places.",
            lambda s, parts=parts: rounded(s.calc(" + ".join(
                f"{k} * {s.look('elements', e, 'atomic_mass')}" for e, k in parts.items())), 2))
    for a, b in pairs(planets, 4):
        add("moons_total", f"How many moons do {a} and {b} have together?",
            lambda s, a=a, b=b: s.calc(f"{s.look('planets', a, 'moons')} + {s.look('planets', b, 'moons')}"))
    for p in rng.sample(planets, 5):
        add("diameter_miles", f"What is the diameter of {p} in miles? Round to the nearest integer.",
            lambda s, p=p: rounded(s.convert(float(s.look("planets", p, "diameter_km")), "km", "mi"), 0))
    for a, b in pairs(planets, 4, key=lambda n: TABLES["planets"][n]["diameter_km"]):
        add("diameter_ratio", f"How many times larger is the diameter of {a} than that of {b}? "
            "Round to 2 decimal places.",
            lambda s, a=a, b=b: rounded(s.calc(f"{s.look('planets', a, 'diameter_km')} / "
                                               f"{s.look('planets', b, 'diameter_km')}"), 2))
    for _ in range(5):
        pct, base = rng.choice([12.5, 15, 17.5, 22, 35, 8]), rng.randrange(120, 5000, 10)
        add("percent", f"What is {fmt(pct)}% of {base}? Give the exact value.",
            lambda s, pct=pct, base=base: s.calc(f"{fmt(pct)} / 100 * {base}"))
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.json").write_text(json.dumps(TABLES, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tasks = make_tasks()
    (out / "tasks.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks),
                                     encoding="utf-8")
    print(f"wrote {out}/tables.json and {len(tasks)} tasks to {out}/tasks.jsonl")


if __name__ == "__main__":
    main()
