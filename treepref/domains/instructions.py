"""Instruction following with checkable constraints: what the arithmetic domain is to math, for SPaR-style
self-play refinement (a judge's verdicts and refinement pairs can be scored exactly, not by opinion).

A problem is a short writing task followed by constraints ("Answer with fewer than 90 words. Do not use any
commas."), each with an exact checker. Constraint ids and kwargs follow IFEval (Zhou et al., 2023), so its
prompt files load with :func:`load_ifeval`, and generated constraints map one to one onto IFEval rows.

Supported IFEval ids, and where the checks are simpler or stricter than IFEval's:

- ``length_constraints:number_words`` (``relation``, ``num_words``): words are ``\\w+`` runs, as in IFEval.
- ``length_constraints:number_sentences`` (``relation``, ``num_sentences``): a sentence ends at a run of
  ``.``, ``!`` or ``?`` (closing quotes/brackets allowed after it) followed by whitespace or the end, or at
  a line break; pieces with no letter or digit do not count. No abbreviation list (unlike IFEval), so
  "Mr. Smith" is two sentences, while "3.5" is not split.
- ``keywords:existence`` (``keywords``), ``keywords:forbidden_words`` (``forbidden_words``),
  ``keywords:frequency`` (``keyword``, ``frequency``, ``relation``): case-insensitive whole-word (or
  whole-phrase) matches. IFEval matches existence and frequency as substrings; here "gardens" is not
  "garden".
- ``detectable_format:number_bullet_lists`` (``num_bullets``): exactly that many lines starting, after
  optional indentation, with ``* `` or ``- `` and some text.
- ``detectable_format:json_format``: the stripped response, optionally inside a Markdown code fence (three
  backticks, with or without ``json``), parses as JSON; any JSON value counts, as in IFEval.
- ``change_case:english_lowercase`` / ``change_case:english_capital``: no uppercase / no lowercase letter;
  the response's language is not checked (IFEval also requires English).
- ``startend:end_checker`` (``end_phrase``): ends with the phrase, ignoring surrounding whitespace and,
  as in IFEval, letter case (so it goes with the case constraints).
- ``startend:quotation``: the stripped response starts and ends with ``"``.
- ``punctuation:no_comma``: no ASCII comma.
- ``detectable_format:title``: contains a ``<<title>>`` on one line.
- ``detectable_content:number_placeholders`` (``num_placeholders``): at least that many ``[...]``.
- ``detectable_content:postscript`` (``postscript_marker``): a line starts with the marker (exact text,
  case-insensitive; IFEval also accepts spacing variants such as "P. S.").

:func:`generate` draws from all of these but quotation, title, placeholders and postscript, and only makes
sets without :func:`conflicts`.
Generation is deterministic from ``(seed, n_constraints, index)`` through a string-seeded
``random.Random``, so problem ``i`` does not depend on ``count``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from treepref.problems import Problem, ProblemError, collect, read_rows

RELATIONS = ("at least", "less than")
DELIMITER = "\n\n"  # how the step scorer joins steps: the reasoning environment's default delimiter


# -- text measures (shared by checks and tests) ---------------------------------------------------------

_SENTENCE_BREAK = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|\n")


def count_words(text: str) -> int:
    """Runs of word characters (``don't`` is two words, as IFEval counts them)."""
    return len(re.findall(r"\w+", text))


def split_sentences(text: str) -> list[str]:
    """Sentences by the simple rule in the module docstring (terminal punctuation dropped)."""
    return [p.strip() for p in _SENTENCE_BREAK.split(text) if re.search(r"[^\W_]", p)]


def _word_pattern(phrase: str) -> re.Pattern:
    """A phrase as a whole-word, case-insensitive pattern; inner whitespace matches any whitespace."""
    body = r"\s+".join(re.escape(part) for part in phrase.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def count_phrase(text: str, phrase: str) -> int:
    """How often ``phrase`` occurs in ``text`` as whole words, ignoring case."""
    return len(_word_pattern(phrase).findall(text))


def _compare(value: int, relation: str, bound: int) -> bool:
    return value >= bound if relation == "at least" else value < bound


def _relation_text(relation: str, n: int, noun: str) -> str:
    return f"at least {n} {noun}" if relation == "at least" else f"fewer than {n} {noun}"


def _quoted(words: list[str], last: str) -> str:
    q = [f'"{w}"' for w in words]
    return q[0] if len(q) == 1 else f"{', '.join(q[:-1])} {last} {q[-1]}"


_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```", re.DOTALL | re.IGNORECASE)


def _is_json(response: str) -> bool:
    text = response.strip()
    if m := _FENCE.fullmatch(text):
        text = m.group(1)
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# -- constraint kinds -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One IFEval instruction id: its kwargs (name -> type tag), exact check and instruction text."""

    params: dict[str, str]  # tags: "count" (int >= 1), "relation", "text" (non-empty str), "words" (list)
    check: Callable[..., bool]
    describe: Callable[..., str]


def _bullets(response: str) -> int:
    return sum(bool(re.match(r"[ \t]*[*-][ \t]+\S", line)) for line in response.splitlines())


KINDS: dict[str, Kind] = {
    "length_constraints:number_words": Kind(
        {"relation": "relation", "num_words": "count"},
        lambda r, relation, num_words: _compare(count_words(r), relation, num_words),
        lambda relation, num_words: f"Answer with {_relation_text(relation, num_words, 'words')}."),
    "length_constraints:number_sentences": Kind(
        {"relation": "relation", "num_sentences": "count"},
        lambda r, relation, num_sentences: _compare(len(split_sentences(r)), relation, num_sentences),
        lambda relation, num_sentences: f"Write {_relation_text(relation, num_sentences, 'sentences')}."),
    "keywords:existence": Kind(
        {"keywords": "words"},
        lambda r, keywords: all(count_phrase(r, k) for k in keywords),
        lambda keywords: f"Mention the word{'s' if len(keywords) > 1 else ''} {_quoted(keywords, 'and')}."),
    "keywords:forbidden_words": Kind(
        {"forbidden_words": "words"},
        lambda r, forbidden_words: not any(count_phrase(r, w) for w in forbidden_words),
        lambda forbidden_words: f"Do not use the word{'s' if len(forbidden_words) > 1 else ''} "
                                f"{_quoted(forbidden_words, 'or')}."),
    "keywords:frequency": Kind(
        {"keyword": "text", "frequency": "count", "relation": "relation"},
        lambda r, keyword, frequency, relation: _compare(count_phrase(r, keyword), relation, frequency),
        lambda keyword, frequency, relation:
            f'Use the word "{keyword}" {_relation_text(relation, frequency, "times")}.'),
    "detectable_format:number_bullet_lists": Kind(
        {"num_bullets": "count"},
        lambda r, num_bullets: _bullets(r) == num_bullets,
        lambda num_bullets: f'Include exactly {num_bullets} bullet points, each on its own line starting with "* ".'),
    "detectable_format:json_format": Kind(
        {}, lambda r: _is_json(r),
        lambda: "Give your whole answer as valid JSON (a ```json code block is fine)."),
    "change_case:english_lowercase": Kind(
        {}, lambda r: not any(c.isupper() for c in r),
        lambda: "Write your whole answer in lowercase letters only."),
    "change_case:english_capital": Kind(
        {}, lambda r: not any(c.islower() for c in r),
        lambda: "Write your whole answer in capital letters only."),
    "startend:end_checker": Kind(
        {"end_phrase": "text"},
        lambda r, end_phrase: r.strip().lower().endswith(end_phrase.strip().lower()),
        lambda end_phrase: f'End your answer with the exact phrase "{end_phrase}" and nothing after it.'),
    "startend:quotation": Kind(
        {}, lambda r: len(s := r.strip()) > 1 and s[0] == s[-1] == '"',
        lambda: "Put your whole answer inside double quotation marks."),
    "punctuation:no_comma": Kind(
        {}, lambda r: "," not in r,
        lambda: "Do not use any commas."),
    "detectable_format:title": Kind(
        {}, lambda r: any(t.strip() for t in re.findall(r"<<([^\n]*?)>>", r)),
        lambda: "Give your answer a title in double angle brackets, like <<my title>>."),
    "detectable_content:number_placeholders": Kind(
        {"num_placeholders": "count"},
        lambda r, num_placeholders: len(re.findall(r"\[.*?\]", r)) >= num_placeholders,
        lambda num_placeholders: f"Include at least {num_placeholders} placeholders in square brackets, "
                                 "like [name]."),
    "detectable_content:postscript": Kind(
        {"postscript_marker": "text"},
        lambda r, postscript_marker: bool(re.search(rf"^\s*{re.escape(postscript_marker.strip())}", r,
                                                    re.IGNORECASE | re.MULTILINE)),
        lambda postscript_marker: f'End with a postscript that starts with "{postscript_marker}".'),
}
SUPPORTED = tuple(KINDS)


def _coerce(tag: str, value: Any) -> Any:
    """``value`` as the param type ``tag`` wants, or ValueError saying why not."""
    if tag == "count":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expected an integer >= 1, got {value!r}")
        return value
    if tag == "relation":
        if value not in RELATIONS:
            raise ValueError(f"expected one of {', '.join(map(repr, RELATIONS))}, got {value!r}")
        return value
    if tag == "text":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a non-empty string, got {value!r}")
        return value
    if not (isinstance(value, list) and value and all(isinstance(w, str) and w.strip() for w in value)):
        raise ValueError(f"expected a non-empty list of non-empty strings, got {value!r}")
    return list(value)


@dataclass(frozen=True)
class Constraint:
    """One checkable instruction: an IFEval id and its kwargs (validated; ``None`` values dropped).

    Not hashable (kwargs is a dict); compare with ``==``.
    """

    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = KINDS.get(self.id)
        if kind is None:
            raise ValueError(f"unsupported instruction id {self.id!r}")
        given = {k: v for k, v in (self.kwargs or {}).items() if v is not None}
        extra = sorted(set(given) - set(kind.params))
        if extra:
            raise ValueError(f"{self.id}: unexpected kwargs {', '.join(extra)}")
        clean = {}
        for name, tag in kind.params.items():
            if name not in given:
                raise ValueError(f"{self.id}: missing {name}")
            try:
                clean[name] = _coerce(tag, given[name])
            except ValueError as e:
                raise ValueError(f"{self.id}: {name}: {e}") from None
        object.__setattr__(self, "kwargs", clean)

    def check(self, response: str) -> bool:
        return bool(KINDS[self.id].check(response, **self.kwargs))

    def describe(self) -> str:
        return KINDS[self.id].describe(**self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kwargs": dict(self.kwargs)}


def constraints_of(source: Problem | dict | list) -> list[Constraint]:
    """The constraints of a Problem, of its ``meta`` dict, or of a list of Constraints / ``{id, kwargs}``."""
    if isinstance(source, Problem):
        source = source.meta
    if isinstance(source, dict):
        if "constraints" not in source:
            raise ValueError("not an instruction problem: meta has no 'constraints'")
        source = source["constraints"]
    return [c if isinstance(c, Constraint) else Constraint(c["id"], c.get("kwargs") or {}) for c in source]


# Pairs no response can satisfy together, whatever the kwargs.
_EXCLUSIVE = {
    frozenset({"change_case:english_lowercase", "change_case:english_capital"}),
    frozenset({"detectable_format:json_format", "detectable_format:number_bullet_lists"}),
    frozenset({"detectable_format:json_format", "length_constraints:number_sentences"}),
    frozenset({"detectable_format:json_format", "startend:end_checker"}),
}


def conflicts(source: Problem | dict | list) -> list[str]:
    """Why the constraints cannot (or, for JSON with sentence counts and end phrases, can hardly) all
    hold at once: exclusive pairs, repeated ids, a word both required and forbidden, a comma where none
    is allowed. Empty when they are compatible; the generator only makes compatible sets."""
    cs = constraints_of(source)
    ids = [c.id for c in cs]
    out = [f"{i} appears {ids.count(i)} times" for i in sorted(set(ids)) if ids.count(i) > 1]
    out += [f"{a} with {b}" for a in sorted(set(ids)) for b in sorted(set(ids))
            if a < b and frozenset({a, b}) in _EXCLUSIVE]
    forbidden = [w for c in cs if c.id == "keywords:forbidden_words" for w in c.kwargs["forbidden_words"]]
    required = [k for c in cs if c.id == "keywords:existence" for k in c.kwargs["keywords"]]
    required += [c.kwargs["keyword"] for c in cs if c.id == "keywords:frequency" and c.kwargs["relation"] == "at least"]
    required += [c.kwargs["end_phrase"] for c in cs if c.id == "startend:end_checker"]
    out += [f'"{w}" is forbidden but "{r}" is required' for w in forbidden for r in required if count_phrase(r, w)]
    if "punctuation:no_comma" in ids:
        out += [f'"{r}" has a comma but commas are forbidden' for r in required if "," in r]
    return out


# -- generation -----------------------------------------------------------------------------------------

TASKS = (
    "Write a short note to a neighbour about {topic}.",
    "Describe {topic}.",
    "Write a short blog post about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Write a brief diary entry about {topic}.",
    "Write a short speech for a school assembly about {topic}.",
    "Give advice to a friend who is dealing with {topic}.",
    "Write a message to your team about {topic}.",
)
TOPICS = (
    "a parcel delivered to the wrong door", "the first snow of the year", "a new bakery in town",
    "learning to ride a bike", "a power cut during dinner", "a school science fair",
    "growing tomatoes on a balcony", "a train that ran two hours late", "a lost umbrella",
    "a noisy party next door", "volunteering at an animal shelter", "a weekend without phones",
    "moving to a new city", "a broken washing machine", "a surprise birthday", "a community clean-up day",
)
# Words for keyword constraints; one pool drawn without replacement, so no word is both required and
# forbidden. None of them occurs in an end phrase.
KEYWORDS = (
    "garden", "river", "lantern", "window", "morning", "coffee", "bicycle", "library", "music", "winter",
    "market", "ocean", "forest", "candle", "mountain", "kitchen", "harbor", "bridge", "festival", "blanket",
)
END_PHRASES = (
    "Is there anything else I can help with?", "Thanks for reading.", "That is all for today.",
    "Let me know what you think!", "See you soon.", "Any other questions?",
)

# Exclusive groups: at most one constraint of each group per problem.
_GROUPS = (
    ("length_constraints:number_words",), ("length_constraints:number_sentences",),
    ("keywords:existence",), ("keywords:forbidden_words",), ("keywords:frequency",),
    ("detectable_format:number_bullet_lists", "detectable_format:json_format"),
    ("change_case:english_lowercase", "change_case:english_capital"),
    ("startend:end_checker",), ("punctuation:no_comma",),
)
# Kwargs are drawn in this order: the bullet count first, since sentence bounds depend on it.
_ORDER = ["detectable_format:number_bullet_lists", *(i for g in _GROUPS for i in g
                                                      if i != "detectable_format:number_bullet_lists")]


def _pick_ids(rng: random.Random, n: int) -> list[str]:
    """``n`` mutually compatible ids, at most one per group."""
    for _ in range(100):
        chosen: list[str] = []
        for group in rng.sample(_GROUPS, len(_GROUPS)):
            cand = rng.choice(group)
            if all(frozenset({cand, c}) not in _EXCLUSIVE for c in chosen):
                chosen.append(cand)
            if len(chosen) == n:
                return chosen
    raise RuntimeError(f"no compatible set of {n} constraints found")  # pragma: no cover


def _kwargs(rng: random.Random, cid: str, chosen: dict[str, dict], pool: list[str]) -> dict:
    """Kwargs for ``cid``, bounded so that together with the rest a short response can satisfy them."""
    relation = rng.choice(RELATIONS)
    if cid == "length_constraints:number_words":  # "less than" leaves room for all required text
        n = rng.randrange(20, 160, 10) if relation == "at least" else rng.randrange(80, 210, 10)
        return {"relation": relation, "num_words": n}
    if cid == "length_constraints:number_sentences":  # every bullet line is a sentence, and so is the end
        bullets = chosen.get("detectable_format:number_bullet_lists", {}).get("num_bullets", 0)
        n = rng.randint(2, 6) if relation == "at least" else rng.randint(bullets + 3, bullets + 8)
        return {"relation": relation, "num_sentences": n}
    if cid == "keywords:existence":
        return {"keywords": [pool.pop() for _ in range(rng.randint(1, 3))]}
    if cid == "keywords:forbidden_words":
        return {"forbidden_words": [pool.pop() for _ in range(rng.randint(1, 3))]}
    if cid == "keywords:frequency":
        return {"keyword": pool.pop(), "frequency": rng.randint(2, 4), "relation": relation}
    if cid == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.randint(2, 5)}
    if cid == "startend:end_checker":
        return {"end_phrase": rng.choice(END_PHRASES)}
    return {}


def make_problem(seed: int, index: int, n_constraints: int = 2) -> Problem:
    """Problem ``index`` of the ``seed`` stream: a writing task and ``n_constraints`` compatible constraints."""
    if not 1 <= n_constraints <= len(_GROUPS):
        raise ValueError(f"n_constraints must be in 1..{len(_GROUPS)}, got {n_constraints}")
    rng = random.Random(f"treepref-instructions:{seed}:{n_constraints}:{index}")
    task = rng.choice(TASKS).format(topic=rng.choice(TOPICS))
    ids = _pick_ids(rng, n_constraints)
    pool = rng.sample(KEYWORDS, len(KEYWORDS))
    chosen: dict[str, dict] = {}
    for cid in sorted(ids, key=_ORDER.index):
        chosen[cid] = _kwargs(rng, cid, chosen, pool)
    constraints = [Constraint(cid, chosen[cid]) for cid in ids]  # the drawn order reads more naturally
    prompt = " ".join([task, *(c.describe() for c in constraints)])
    return Problem(id=f"inst-{seed}-{index}", prompt=prompt, answer=None,
                   meta={"task": task, "constraints": [c.to_dict() for c in constraints]})


def generate(count: int, seed: int = 0, n_constraints: int = 2) -> list[Problem]:
    """``count`` instruction problems; the same ``(seed, n_constraints)`` always gives the same list."""
    return [make_problem(seed, i, n_constraints) for i in range(count)]


# -- scoring --------------------------------------------------------------------------------------------

def check(problem_or_meta: Problem | dict | list, response: str) -> list[bool]:
    """One verdict per constraint, in the problem's order."""
    return [c.check(response) for c in constraints_of(problem_or_meta)]


def score(problem: Problem | dict | list, response: str) -> float:
    """Share of constraints the response satisfies (1.0 for a problem without constraints)."""
    verdicts = check(problem, response)
    return sum(verdicts) / len(verdicts) if verdicts else 1.0


def passes(problem: Problem | dict | list, response: str) -> bool:
    """Whether every constraint holds (IFEval's strict prompt-level accuracy for one response)."""
    return all(check(problem, response))


async def instruction_reward(problem: Problem, response: str) -> float:
    """OutcomeVerifier: :func:`score` of the whole response (1.0 when every constraint holds)."""
    return score(problem, response)


async def instruction_step_scorer(problems: list[Problem], steps: list[list[str]]) -> list[list[float | None]]:
    """StepScorer: for each step, :func:`score` of the response so far (steps joined with ``DELIMITER``).

    Prefix scores are not monotone: "at least" constraints and the end phrase only hold late, "less than"
    and forbidden-word constraints can be broken by a later step.
    """
    return [[score(p, DELIMITER.join(path[:k])) for k in range(1, len(path) + 1)]
            for p, path in zip(problems, steps)]


# -- IFEval files ---------------------------------------------------------------------------------------

def _row_constraints(row: dict, file: str, line: int) -> tuple[list[Constraint], list[ProblemError]]:
    """The row's constraints from ``instruction_id_list`` and aligned ``kwargs``, or what is wrong."""
    err = lambda fld, why: ProblemError(file, line, fld, why)  # noqa: E731
    ids = row.get("instruction_id_list")
    if ids is None:
        return [], [err("instruction_id_list", "missing instruction_id_list")]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return [], [err("instruction_id_list", "expected a list of instruction id strings")]
    if not ids:
        return [], [err("instruction_id_list", "no instruction ids")]
    kwargs = row.get("kwargs")
    if kwargs is None:
        kwargs = [{} for _ in ids]
    if not isinstance(kwargs, list) or not all(k is None or isinstance(k, dict) for k in kwargs):
        return [], [err("kwargs", "expected a list of objects, one per instruction id")]
    if len(kwargs) != len(ids):
        return [], [err("kwargs", f"{len(kwargs)} kwargs for {len(ids)} instruction ids")]
    errors = [err("instruction_id_list", f"unsupported instruction id {i!r}") for i in ids if i not in KINDS]
    constraints = []
    for n, (cid, kw) in enumerate(zip(ids, kwargs)):
        if cid not in KINDS:
            continue
        try:
            constraints.append(Constraint(cid, kw or {}))
        except ValueError as e:
            errors.append(err("kwargs", f"[{n}] {e}"))
    return constraints, errors


def load_ifeval(path: str | Path) -> tuple[list[Problem], list[ProblemError]]:
    """Problems from an IFEval-style JSONL/JSON/parquet file: ``key`` (or ``id``), ``prompt``,
    ``instruction_id_list`` and ``kwargs`` (one object per id; ``None`` values are ignored).

    A row with an unsupported id, misaligned lists, bad kwargs or a missing prompt is a
    :class:`ProblemError` naming the line and field; the other rows still load. Ids are the row's key
    as text, else ``"{file stem}-{line}"``; ``meta["constraints"]`` holds the constraints.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IFEval file not found: {path}")

    def check(row: dict, line: int):
        constraints, bad = _row_constraints(row, str(path), line)
        rest = {k: v for k, v in row.items() if k not in ("instruction_id_list", "kwargs", "meta")}
        id_field = "key" if "key" in row else "id"
        return {**rest, "meta": {"constraints": [c.to_dict() for c in constraints]}}, bad, {"id_field": id_field}

    return collect(read_rows(path), str(path), check, answer_field=None)
