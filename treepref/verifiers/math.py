"""Final answers of math problems: find them in model text and decide whether two are the same value.

Finding: :func:`read_answer` is the one rule for reading the final answer a step of model text states
(boxed, answer phrases, result phrases, and -- only when the model ended the sequence -- the value the step
concludes with); :func:`extract_answer` is that rule without the end-of-sequence fallback.

Equivalence uses math-verify (sympy underneath) for the hard cases, behind cheap layers that settle the
common ones: a normaliser that strips what graders ignore (``$``, units, ``\\text{}``, thousands
separators, trailing periods, ``\\dfrac``), an exact comparison of plain numbers, and a normalised string
comparison. Search calls this for every terminal node, so the cheap path matters, and results are cached.

math-verify guards parsing with ``signal.alarm``, which only works on the main thread; off it we call
math-verify without its timeout (inputs are length-capped instead), so the verifier also runs in worker
threads and executors.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Callable

from treepref.problems import Problem

MAX_ANSWER_CHARS = 400  # longer "answers" are not worth a sympy parse (and could stall it)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group opening at ``text[start]`` and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``."""
    for match in reversed(list(_BOX_RE.finditer(text))):
        i = match.end()
        if i < len(text) and text[i] == "{":
            inner = _braced(text, i)
            if inner is not None:
                return inner[0].strip()
        elif i < len(text) and text[i] == " ":
            token = re.match(r"\s*([^\s$]+)", text[i:])
            if token:
                return token.group(1).rstrip(".")
    return None


# -- normalisation ------------------------------------------------------------------------------------
_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "5 cm", "5cm", "12 dollars" -> the number; "2x" (one letter, no space) is algebra and stays.
_UNIT_WORDS_RE = re.compile(r"^(-?[\d.]+(?:/\d+)?)(?:\s+[a-zA-Z][a-zA-Z. ]*|[a-zA-Z]{2,}[a-zA-Z. ]*)$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")


_PROSE_ASIDE_RE = re.compile(r"(?:i\.e\.|e\.g\.|[A-Za-z]{2,}\b)|.*\b[A-Za-z]{2,}\s+[A-Za-z]{2,}\b")


def _drop_aside(s: str) -> str:
    """``s`` without a closing parenthetical that explains in words: ``"100 (i.e., all values)"`` -> ``"100"``.

    Only an aside set off by a space whose text is prose goes (it opens with "i.e.", "e.g." or a word, or
    has two words in a row: ``"5 (not 6)"``, ``"3 (mod 7)"``); ``"(x+1)(x-1)"``, ``"sqrt(2)"`` and
    ``"2 (x+1)"`` stay as they are.
    """
    s = s.rstrip()
    if not s.endswith(")"):
        return s
    depth = 0
    for i in range(len(s) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(s[i], 0)
        if depth == 0:
            break
    else:
        return s
    inner = s[i + 1:-1].strip()
    if i > 0 and s[i - 1].isspace() and _PROSE_ASIDE_RE.match(inner):
        return s[:i].rstrip()
    return s


def normalize_answer(text: str) -> str:
    """A canonical spelling of an answer; equal spellings are equal answers (the converse needs sympy)."""
    s = _drop_aside(text.strip())
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\left\b|\\right\b", "", s)
    s = re.sub(r"\\[,!;: ]", "", s)  # LaTeX spacing, also used as a thousands separator
    s = s.replace("{,}", ",")
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = re.sub(r"\\?%", "", s)  # percentages compare as their number
    s = s.replace("−", "-").replace("–", "-")
    # \text{...}: a unit after a value goes; a word answer keeps its word.
    has_value = bool(re.search(r"\d", _TEXT_RE.sub("", s)))
    s = _TEXT_RE.sub("" if has_value else r"\1", s).strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", s)  # "x = 5" -> "5"
    s = s.rstrip(".").strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    unit = _UNIT_WORDS_RE.match(s)
    if unit:
        s = unit.group(1)
    s = re.sub(r"\s+", " ", s)
    return s


def _as_fraction(s: str) -> Fraction | None:
    """``s`` as an exact number when it is a plain integer, decimal, ``a/b`` or ``\\frac{a}{b}``."""
    frac = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?)\(?(-?\d+)\)?/\(?(-?\d+)\)?", s)
    try:
        if frac:
            value = Fraction(int(frac.group(2)), int(frac.group(3)))
            return -value if frac.group(1) else value
        if _NUMBER_RE.fullmatch(s.replace(" ", "")):
            return Fraction(s.replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return None


# -- reading a final answer ---------------------------------------------------------------------------
# THE rule for "which final answer does this text state". Tiers, first hit wins:
#   1. ``pattern`` (a caller's regex, first group = the answer; last match in the text)
#   2. the last ``\boxed{}`` / ``\fbox{}``
#   3. an answer phrase, the last one in the text: "the (final) answer is [still/now/...] X",
#      "answer: X", "answer = X", "the answer to ... is X", "X is the (final/correct) answer", "#### X",
#      "X is the only possible value", "the only possible value (for ...) is X"
#   4. a result phrase in the step's LAST sentence: "the (final) result is X", "the total (number of
#      apples) is X", "X is the (final) result/total" -- but not "X is the result of <operation>"
#   5. only when ``ended``: the value the text concludes with (see ``_concluded``)
# A value is a number (integer, decimal, negative, "1,234", "50%", "$5", "3/4", "\frac{3}{4}"), optionally
# followed by unit words that are dropped ("16 apples" -> "16"). After an answer phrase it may also be a
# short simple expression ("2x + 1", "\sqrt{2}", "(3, 2)", "n!/(2n)", "sqrt(3)/3"), one capitalised word
# ("Monday", "No"), one variable ending the sentence ("n"), or a whole sentence listing answers ("376 and
# 625", "x=6, y=5"); after any phrase, an equation reads as its right-hand side ("The answer is 3 + 4 = 7"
# -> "7"), and an aside in words is dropped ("100 (i.e., all values)" -> "100").
_NUM_CORE = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_FRAC = r"\\[dt]?frac\s*\{\s*-?\d+(?:\.\d+)?\s*\}\s*\{\s*-?\d+(?:\.\d+)?\s*\}"
_VALUE = (rf"(?<![\w.,\\])(?:[-−]\s?)?(?:\\?\$\s?)?(?:[-−]\s?)?"
          rf"(?:{_FRAC}|(?:{_NUM_CORE})(?:/(?:{_NUM_CORE}))?)(?:\s?\\?%)?(?![\d.]*\d)")
_VALUE_RE = re.compile(_VALUE)
_UNITS = r"(?:\s+[A-Za-z][A-Za-z'.-]*(?:\s+[A-Za-z][A-Za-z'.-]*){0,3}|[A-Za-z]{2,}[A-Za-z'.-]*)"
_VALUE_WITH_UNITS_RE = re.compile(rf"({_VALUE}){_UNITS}?")
_MARKUP = r"(?:\*\*|__|\\?\$|\\\(|\\\[|\s)*"  # what may sit between a phrase and its value
# A value followed by an operator is an operand, not a result ("= 16 - 2", "2x", "3(4)").
_OPERAND_NEXT_RE = re.compile(r"\s*(?:[-+*/×÷·^]|\\times|\\cdot|\\div|plus\b|minus\b|times\b|multiplied\b|"
                              r"divided\b|over\b)\s*[\d(\\$]|[A-Za-z](?![A-Za-z])|\(")
_ADVERBS = r"(?:\s+(?:still|now|then|therefore|thus|hence|simply|just|clearly|indeed|actually|exactly))?"
_ANSWER_PHRASE_RE = re.compile(
    r"\banswer\b(?:\s+to\s+[^.\n:=]{1,50}?)?(?:\s*\*\*)?\s*"
    rf"(?:(?:is|was|would\s+be|will\s+be|should\s+be|must\s+be|becomes)\b{_ADVERBS}|[:=])(?:\s*\*\*)?",
    re.IGNORECASE)
_IS_THE_ANSWER_RE = re.compile(
    rf"({_VALUE}){_MARKUP},?\s+is\s+(?:the|our|my|your)\s+(?:final\s+|correct\s+|right\s+)?answer\b", re.IGNORECASE)
_HASHES_RE = re.compile(r"####+")
# "0 is the only possible value", "the only possible value for the limit is 4": answers in other words.
_IS_THE_ONLY_RE = re.compile(
    rf"({_VALUE}){_MARKUP},?\s+is\s+the\s+only\s+(?:possible\s+)?(?:value|solution|answer)\b", re.IGNORECASE)
_ONLY_VALUE_RE = re.compile(
    r"\bthe\s+only\s+(?:possible\s+)?(?:value|solution)(?:\s+(?:for|of)\s+[^.\n:=]{1,40}?)?\s+is\b" + _ADVERBS,
    re.IGNORECASE)
_RESULT_PHRASE_RE = re.compile(
    r"\bthe\s+(?:final\s+)?(?:result|total)(?:\s+[A-Za-z']+){0,4}?\s+(?:is|was|equals|comes\s+to)\b" + _ADVERBS,
    re.IGNORECASE)
_IS_THE_RESULT_RE = re.compile(
    rf"({_VALUE}){_MARKUP},?\s+is\s+the\s+(?:final\s+)?(?:result|total)\b(?!\s+(?:of|for|from|when|after|if)\b)",
    re.IGNORECASE)
_RESULT_NOUN_TAIL_RE = re.compile(r"(?:\s+[A-Za-z']+){0,5}")  # "16 is the total [number of apples]."
# Where the value after a phrase stops: a clause that explains or continues rather than states.
_CLAUSE_RE = re.compile(r"\s(?:because|since|which|so|but|as|when|if|where|and|or|for|while|then|given|"
                        r"after|that|i\.e\.?|e\.g\.?)\b", re.IGNORECASE)
_NOT_AN_ANSWER_WORD = {"The", "This", "That", "These", "Those", "It", "Its", "Not", "A", "An", "So",
                       "Therefore", "Thus", "Correct", "Incorrect", "Wrong", "Right", "Unknown", "Unclear",
                       "None", "Undefined", "Here", "Below", "Above", "As", "In", "We", "I", "You"}
# Function names an answer expression may call ("sqrt(3)/3", "2^floor(n/2)"): not English words.
_FUNCTIONS_RE = re.compile(r"\b(?:sqrt|cbrt|floor|ceil|log|ln|exp|sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|"
                           r"binom|gcd|lcm|max|min|abs|C|P)(?=\s*\()|\b(?:sum|prod)(?=_)")
# Where a list of answers splits ("376 and 625", "x=6, y=5", "1, 4 and 9"); not "1,234".
_LIST_SEP_RE = re.compile(r",(?=\s|[A-Za-z(±\-−])\s*(?:and\s+)?|\s+and\s+")


def _depths(s: str) -> list[int]:
    """The bracket depth at each character of ``s`` (an opening bracket counts as outside)."""
    out, depth = [], 0
    for c in s:
        if c in ")]}":
            depth = max(depth - 1, 0)
        out.append(depth)
        if c in "([{":
            depth += 1
    return out


def _split_top(s: str, pattern: re.Pattern) -> list[str]:
    """``s`` split where ``pattern`` matches outside brackets."""
    depths, parts, last = _depths(s), [], 0
    for m in pattern.finditer(s):
        if depths[m.start()] == 0:
            parts.append(s[last:m.start()])
            last = m.end()
    return parts + [s[last:]]


def _phrase_span(text: str, start: int, *, sentence: bool = False) -> tuple[str, int]:
    """The text after a phrase up to the end of its clause, and the index where it stops.

    A clause ends at a newline, ``;``/``!``/``?``, a sentence period (not a decimal point), a comma that is
    not a thousands separator, an unbalanced closing bracket, or a word such as "because" / "so" / "and";
    brackets and braces protect what is inside them ("(3, 2)", "\\frac{1}{2}"). A ``!`` right after a
    letter, digit or ``)`` and followed by more text is a factorial ("n!.", "(2n)!/2"), and an ellipsis
    inside an expression ("(x-1)(x-2)...(x-9)") is no period. ``sentence``: read on to the end of the
    sentence (commas and clause words do not stop it).
    """
    depth, i, n = 0, start, len(text)
    depths = []
    while i < n:
        c = text[i]
        depths.append(depth)
        if c == "\n":
            break
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif c == "!" and i > start and (text[i - 1].isalnum() or text[i - 1] == ")") \
                and i + 1 < n and not text[i + 1].isspace():
            pass  # a factorial
        elif c == "." and text.startswith("...", i) and i + 3 < n and not text[i + 3].isspace() \
                and text[i + 3] not in ".!?":
            depths.extend((depth, depth))
            i += 3
            continue
        elif depth == 0 and (c in ";!?" or (c == "." and not (i + 1 < n and text[i + 1].isdigit()))
                             or (c == "," and not sentence and not (i + 1 < n and text[i + 1].isdigit()))):
            break
        i += 1
    span = text[start:i]
    if not sentence:
        for cut in _CLAUSE_RE.finditer(span):
            if depths[cut.start()] == 0:  # "999 (i.e., all except for one)": the "for" is inside the aside
                span, i = span[:cut.start()], start + cut.start()
                break
    return span, i


def _tidy(s: str) -> str:
    """``s`` without the markup around an answer: math delimiters, bold, currency, trailing punctuation."""
    s = re.sub(r"\*\*|__|\\?\$|\\[()\[\]]", "", s)
    prev = None
    while s != prev:
        prev = s
        s = s.strip().strip("`*").lstrip(":=").strip()
        s = re.sub(r"(?:[.,;:?]|(?<![A-Za-z)])!)+$", "", s).strip()  # "n!" and "(2n)!" keep theirs
    return s


def _number_of(value: str) -> str:
    """A value as stated, minus currency and spacing after a sign (``"-$ 5"`` -> ``"-5"``)."""
    s = re.sub(r"\\?\$", "", value).strip()
    return re.sub(r"^([-−])\s+", r"\1", s)


def _simple_expression(s: str) -> bool:
    """Whether ``s`` reads as one short math expression ("2x + 1", "n!/(2n)", "sqrt(3)/3", "x^2-xy")."""
    if len(s) > 60 or not re.fullmatch(r"[0-9A-Za-z\\{}()\[\]^_+\-−*/.,|'<> ×÷·!±=]+", s):
        return False
    if any(c == "=" and d == 0 for c, d in zip(s, _depths(s))):  # "=" only inside brackets: "sum_(i=1)^n"
        return False
    if re.match(r"\s*[+*/^=,.!]", s):
        return False
    bare = _FUNCTIONS_RE.sub(" ", re.sub(r"\\text\s*\{[^{}]*\}|\\[A-Za-z]+", " ", s))
    # English words are not an expression. Variables are letters: one alone, or a short run glued to
    # operators ("xy - yz"); a run of four or more, or one standing apart ("2 or 3", "5 cm"), is a word.
    for m in re.finditer(r"[A-Za-z]{2,}", bare):
        apart = (m.start() == 0 and m.end() == len(bare)) or (m.start() > 0 and bare[m.start() - 1].isspace()) \
            or (m.end() < len(bare) and bare[m.end()].isspace())
        if len(m.group()) > 3 or apart:
            return False
    return bool(re.search(r"\d|\\", s) or (re.search(r"[A-Za-z]", s) and re.search(r"[-+*/^!±()]", s)))


def _list_item(s: str) -> bool:
    """Whether ``s`` is one item of a list of answers: a value, a short expression, ``x = value``, or a
    bracketed group of those ("(x=8, y=2)")."""
    s = s.strip()
    group = re.fullmatch(r"\((.*)\)", s)
    if group and _braced("{" + group.group(1) + "}", 0) is not None:
        inner = _split_top(group.group(1), _LIST_SEP_RE)
        if len(inner) > 1 and all(_list_item(x) and not x.strip().startswith("(") for x in inner):
            return True
    assign = re.fullmatch(r"[A-Za-z]\s*=\s*(.+)", s)
    if assign:
        s = assign.group(1)
    return bool(_VALUE_RE.fullmatch(s) or _simple_expression(s))


def _read_list(text: str, start: int) -> str | None:
    """A whole sentence after an answer phrase that lists several answers: "376 and 625", "1, 4 and 9",
    "x=6, y=5", "x=0, y=2 and x=9, y=11", "(x=8, y=2), (x=2, y=8)". None unless every item is a value."""
    span, stop = _phrase_span(text, start, sentence=True)
    if not _sentence_ends(text, stop):
        return None
    s = _tidy(span)
    items = _split_top(s, _LIST_SEP_RE)
    if len(items) < 2 or not all(_list_item(x) for x in items):
        return None
    return s


def _read_value(span: str, *, expressions: bool = False, word: bool = False) -> str | None:
    """The answer a phrase's clause states: its number or the right-hand side of its equation; with
    ``expressions`` also a short expression, with ``word`` also one capitalised word (or a choice "(C)").
    None when the clause is no answer."""
    s = _drop_aside(_tidy(span))
    equals = [i for i, d in enumerate(_depths(s)) if s[i] == "=" and d == 0]
    if equals and not re.search(r"[<>!]=", s):  # the right-hand side ("sum_(i=1)^n" is no equation)
        s = _tidy(s[equals[-1] + 1:])
    if not s:
        return None
    m = _VALUE_WITH_UNITS_RE.fullmatch(s)
    if m:
        return _number_of(m.group(1))
    if expressions and _simple_expression(s):
        return s
    if word and expressions and re.fullmatch(r"[b-z]", s):  # "The answer is n." (not the article "a")
        return s
    if word and (re.fullmatch(r"\([A-Z]\)", s)
                 or (re.fullmatch(r"[A-Z][a-z]{1,19}", s) and s not in _NOT_AN_ANSWER_WORD)):
        return s
    return None


def _stated_answer(text: str) -> str | None:
    """Tier 3: the last answer phrase ("the answer is", "answer:", "X is the answer", "####")."""
    def after(start: int, words: bool) -> str | None:
        listed = _read_list(text, start)
        if listed is not None:
            return listed
        span, stop = _phrase_span(text, start)
        # A word is an answer only as the whole sentence ("The answer is Monday."), never a clause opener
        # ("Answer: First, ..."); "####" (also a markdown heading) takes no words at all.
        return _read_value(span, expressions=True, word=words and _sentence_ends(text, stop))

    found: list[tuple[int, Callable[[], str | None]]] = []
    for m in _ANSWER_PHRASE_RE.finditer(text):
        found.append((m.start(), lambda e=m.end(): after(e, True)))
    for m in _HASHES_RE.finditer(text):
        found.append((m.start(), lambda e=m.end(): after(e, False)))
    for m in _ONLY_VALUE_RE.finditer(text):
        found.append((m.start(), lambda e=m.end(): after(e, True)))
    for m in _IS_THE_ANSWER_RE.finditer(text):
        found.append((m.start(), lambda v=m.group(1): _number_of(v)))
    for m in _IS_THE_ONLY_RE.finditer(text):
        found.append((m.start(), lambda v=m.group(1): _number_of(v)))
    for _, read in sorted(found, key=lambda f: f[0], reverse=True):
        value = read()
        if value:
            return value
    return None


def _sentence_ends(text: str, i: int) -> bool:
    """Whether a clause stopping at ``text[i]`` is a whole sentence (period, ``!``, ``?``, newline, end)."""
    return i >= len(text) or text[i] in ".!?\n"


def _at_the_end(text: str, i: int) -> bool:
    """Whether nothing but punctuation and markup follows ``text[i]``: its sentence ends the text."""
    return not re.search(r"[^\s.!*$)\]}\\]", text[i:])


def _stated_result(text: str) -> str | None:
    """Tier 4: "the result/total is X" or "X is the result/total" as the text's last sentence."""
    for m in reversed(list(_RESULT_PHRASE_RE.finditer(text))):
        span, stop = _phrase_span(text, m.end())
        value = _read_value(span)
        if value is not None and _at_the_end(text, stop):
            return value
    for m in reversed(list(_IS_THE_RESULT_RE.finditer(text))):
        if _at_the_end(text, _RESULT_NOUN_TAIL_RE.match(text, m.end()).end()):
            return _number_of(m.group(1))
    return None


# Tier 5 (ended only): phrases that conclude a value. Each has one group, the value.
_LEADS_IN = r"(?:\d|\b(?:this|that|which|it|them|these|together|altogether|all)|\b\w+ing)"
_CONCLUDING_RES = [
    re.compile(rf"(?<![<>!=])=(?!=){_MARKUP}({_VALUE})"),
    re.compile(rf"\b(?:equals|equal\s+to|we\s+get|you\s+get|I\s+get|we\s+obtain|results\s+in|comes\s+to|"
               rf"which\s+is|which\s+gives(?:\s+us)?|which\s+makes){_MARKUP}({_VALUE})", re.IGNORECASE),
    re.compile(rf"{_LEADS_IN}[\s$*)]*\s(?:gives(?:\s+us)?|makes|make|give\s+us){_MARKUP}({_VALUE})", re.IGNORECASE),
    re.compile(rf"\b(?:result|total|sum|product|difference|quotient)\b[^.\n]{{0,60}}?\s"
               rf"(?:is|was|are|equals|comes\s+to){_ADVERBS}{_MARKUP}({_VALUE})", re.IGNORECASE),
    re.compile(rf"\d\s*(?:[-+*/×÷]|plus|minus|times|multiplied\s+by|divided\s+by|over)\s*\\?\$?\d[\d,.]*\s*"
               rf"(?:is|are){_MARKUP}({_VALUE})", re.IGNORECASE),
]
# "22 is the result of 11 multiplied by 2": the value comes first and the rest of the sentence is operands.
_RESULT_OF_RE = re.compile(
    rf"({_VALUE}){_MARKUP},?\s+is\s+the\s+(?:final\s+)?(?:result|total|sum|product|difference|quotient)\b",
    re.IGNORECASE)


def _as_number(value: str) -> Fraction | None:
    s = normalize_answer(value).replace(" ", "")
    return _as_fraction(s)


def _concluded(text: str) -> str | None:
    """Tier 5: the value ``text`` concludes with, for a sequence that ended without stating an answer.

    Candidates are values that a step presents as results: the right-hand side of "=", the value after
    "equals" / "we get" / "which is" / "this gives" / "3 + 4 makes", after "the sum (of 13 and 3) is",
    after "13 plus 3 is", or before "is the result (of ...)". A value followed by an operator ("= 16 - 2")
    is an operand, not a result. The latest candidate wins, and only if every number after it is the same
    value: a step that goes on to other numbers ("= 14. Then multiply 14 by 3") concluded nothing.
    Numbers that are merely mentioned or operated on ("Let's look at 13 and 3", "11 multiplied by 2",
    "3 + 4") are never answers.
    """
    best: tuple[int, str, int] | None = None  # (where the value starts, the value, where the check resumes)
    for pattern in _CONCLUDING_RES:
        for m in pattern.finditer(text):
            if _OPERAND_NEXT_RE.match(text, m.end(1)):
                continue
            if best is None or m.start(1) > best[0]:
                best = (m.start(1), m.group(1), m.end(1))
    for m in _RESULT_OF_RE.finditer(text):
        if best is None or m.start(1) > best[0]:
            sentence_end = re.search(r"[.;!?\n](?!\d)|$", text[m.end():])
            best = (m.start(1), m.group(1), m.end() + sentence_end.end())
    if best is None:
        return None
    _, value, resume = best
    number = _as_number(value)
    if number is None:
        return None
    for later in _VALUE_RE.finditer(text, resume):
        other = _as_number(later.group(0))
        if other is None or abs(other) != abs(number):
            return None
    return _number_of(value)


def read_answer(text: str, *, ended: bool = False, pattern: re.Pattern | str | None = None) -> str | None:
    """The final answer that a step of model text states, or None. THE rule for reading one.

    In order, the first that gives an answer wins:

    1. ``pattern``: a caller's regex whose first group is the answer (a string is compiled case-insensitive
       and multi-line); its last match with a non-empty group, stripped of ``$``, ``**`` and a final period.
    2. The last complete ``\\boxed{...}`` / ``\\fbox{...}``.
    3. The last answer phrase: "the (final) answer is X" (also "was", "would be", followed by "still",
       "now", "therefore", ...), "the answer to ... is X", "answer: X", "answer = X", "X is the (final,
       correct) answer", "#### X", "X is the only possible value", "the only possible value (for the
       limit) is X". Case-insensitive; ``$``, ``\\(...\\)`` and ``**bold**`` are ignored.
    4. A result phrase, only as the text's last sentence: "the (final) result is X", "the total is X",
       "the total (number of apples) is X", "X is the (final) result/total" -- not "X is the result of
       <operation>", which describes where an intermediate number came from.
    5. Only when ``ended`` (the model ended the sequence without stating an answer): the value the text
       concludes with (:func:`_concluded`): the right-hand side of its last "=" or "equals" / "gives" /
       "we get", or a value stated as a result ("22 is the result of 11 multiplied by 2." -> "22"); never
       an operand ("11 multiplied by 2", "3 + 4") or a number merely mentioned.

    Values are returned as stated (the verifier compares values): "1,234", "-3", "3/4", "\\frac{3}{4}",
    "50%"; currency signs and unit words go ("$16 apples" -> "16"). After a phrase, an equation gives its
    right-hand side ("The answer is 3 + 4 = 7." -> "7"); after an answer phrase (3) a short expression
    ("2x + 1", "\\sqrt{2}", "n!/(2n)"), one capitalised word ("Monday", "No"), a lone variable ending the
    sentence ("n") or a sentence that lists answers ("376 and 625", "x=6, y=5") is an answer too; an aside
    in words goes ("100 (i.e., all values)" -> "100"). Prose after a phrase that is no value ("the answer
    is not clear") is no answer: a wrong answer is worse than none.
    """
    if pattern is not None:
        if isinstance(pattern, str):
            pattern = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
        if pattern.groups < 1:
            raise ValueError("pattern needs a group that captures the answer")
        for m in reversed(list(pattern.finditer(text))):
            value = _tidy(m.group(1) or "")
            if value:
                return value
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    answer = _stated_answer(text) or _stated_result(text)
    if answer is None and ended:
        answer = _concluded(text)
    return answer


def extract_answer(text: str) -> str | None:
    """The final answer ``text`` states (:func:`read_answer` without the end-of-sequence fallback)."""
    return read_answer(text)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _math_verify(ref: str, pred: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    timeout = 3 if _on_main_thread() else None
    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    try:
        gold = parse(f"${ref}$", extraction_config=config, parsing_timeout=timeout)
        target = parse(f"${pred}$", extraction_config=config, parsing_timeout=timeout)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=timeout))
    except Exception:  # a parser crash is a "cannot confirm", never a failed search
        return False


_ALTERNATIVES_RE = re.compile(r",?\s+or\s+(?:equivalently|an\s+equivalent\s+form\s+such\s+as)\s+", re.IGNORECASE)
_APPROXIMATELY_RE = re.compile(r",?\s+or\s+(?:approximately|about|roughly)\s+.*$", re.IGNORECASE | re.DOTALL)
_REFERENCE_VALUE_RES = [
    re.compile(r"(.+?)\s+is\s+the\s+only\s+(?:possible\s+)?(?:value|solution|answer)", re.IGNORECASE),
    re.compile(r"the\s+only\s+(?:possible\s+)?(?:value|solution)(?:\s+(?:for|of)\s+.{1,40}?)?\s+is\s+(.+)",
               re.IGNORECASE),
    re.compile(r"the\s+limit\s+(?:exists\s+and\s+)?is\s+(?:equal\s+to\s+)?(.+)", re.IGNORECASE),
]


def reference_forms(ref: str) -> tuple[str, ...]:
    """The reference answer and the other spellings it gives of the same answer, as published sets write
    them (CHAMP, for one): ``"C(10, 5), or equivalently 252"`` -> also ``C(10, 5)`` and ``252``;
    ``"5/14, or approximately 35.7%"`` -> also ``5/14`` (the approximation is no exact answer);
    ``"0 is the only possible value"``, ``"The only possible value for the limit is 4"``, ``"The limit
    exists and is equal to 3"`` -> also the value. A prose reference with no such value ("No integer
    solutions") has only itself.
    """
    forms = [ref]
    if len(ref) > MAX_ANSWER_CHARS:
        return tuple(forms)
    exact = _APPROXIMATELY_RE.sub("", ref.strip().rstrip(".")).strip()
    for part in _ALTERNATIVES_RE.split(exact):
        part = part.strip()
        for pattern in _REFERENCE_VALUE_RES:
            m = pattern.fullmatch(part)
            if m and not re.search(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}", m.group(1)):
                part = m.group(1).strip()
                break
        if part and part not in forms:
            forms.append(part)
    return tuple(forms)


@lru_cache(maxsize=65536)
def answers_match(pred: str, ref: str) -> bool:
    """Whether a predicted final answer equals the reference (order matters only for math-verify's gold).

    Plain numbers compare exactly (``1/2 == \\frac{1}{2} == 0.5``, ``1,234 == 1234``); word answers
    compare as case-insensitive text (sympy would read ``Monday`` as a product of symbols); everything
    else (``\\sqrt{2}/2``, intervals, tuples, expressions) goes to math-verify. A reference that spells its
    answer several ways or in words (:func:`reference_forms`) matches any of its forms.
    """
    if not pred or not ref:
        return bool(pred) and pred.strip() == (ref or "").strip()
    return any(_match_one(pred, form) for form in reference_forms(ref))


def _solutions(s: str) -> list[dict[str, str]] | None:
    """``s`` as solutions of assignments when it is nothing else: ``"x=6, y=5"`` -> ``[{x: 6, y: 5}]``,
    ``"x=0, y=2 and x=9, y=11"`` or ``"(x=8, y=2), (x=2, y=8)"`` -> two; a repeated name starts the next."""
    s = _normalize_keep_name(s)
    items = [x.strip() for x in _split_top(s, _LIST_SEP_RE)]
    flat: list[str] = []
    for x in items:
        group = re.fullmatch(r"\((.*)\)", x)
        if group:
            flat.extend(y.strip() for y in _split_top(group.group(1), _LIST_SEP_RE))
        else:
            flat.append(x)
    out: list[dict[str, str]] = []
    for x in flat:
        m = re.fullmatch(r"([A-Za-z])\s*=\s*([^=]+)", x)
        if not m:
            return None
        if not out or m.group(1) in out[-1]:
            out.append({})
        out[-1][m.group(1)] = m.group(2).strip()
    return out if len(flat) > 1 else None


def _same_solutions(ps: list[dict[str, str]], rs: list[dict[str, str]]) -> bool:
    """Whether two sets of solutions hold the same ones, in any order (each names the same variables)."""
    def same(a: dict[str, str], b: dict[str, str]) -> bool:
        return a.keys() == b.keys() and all(answers_match(a[k], b[k]) for k in a)

    return len(ps) == len(rs) and all(any(same(a, b) for b in rs) for a in ps) \
        and all(any(same(a, b) for a in ps) for b in rs)


def _normalize_keep_name(text: str) -> str:
    """:func:`normalize_answer` up to the leading ``x =`` it drops (needed to compare assignments)."""
    m = re.match(r"\s*([a-zA-Z])\s*=\s*(?=\S)", text)
    rest = normalize_answer(text)
    return f"{m.group(1)}={rest}" if m else rest


def _match_one(pred: str, ref: str) -> bool:
    if not pred or not ref or len(pred) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        return bool(pred) and pred.strip() == (ref or "").strip()
    p, r = normalize_answer(pred), normalize_answer(ref)
    if not p or not r:
        return False
    if p == r or p.replace(" ", "") == r.replace(" ", ""):
        return True
    ps, rs = _solutions(pred), _solutions(ref)
    if ps is not None and rs is not None:  # math-verify would take "x=5, y=6" for "x=6, y=5"
        return _same_solutions(ps, rs)
    if any(re.search(r"\b(?:sum|prod)_", x) for x in (p, r)):  # math-verify reads "sum_(k=1)^n 1/k" as 1
        return False
    pf, rf = _as_fraction(p), _as_fraction(r)
    if pf is not None and rf is not None:
        return pf == rf
    if re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", p) and re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", r):
        return p.lower() == r.lower()
    return _math_verify(r, p)


class MathVerifier:
    """Outcome verifier for math answers: 1.0 right, 0.0 wrong, None when the problem has no reference.

    ``answer`` may be the bare final answer or a whole text that states one (read by :func:`read_answer`).
    """

    async def __call__(self, problem: Problem, answer: str | None) -> float | None:
        if problem.answer is None:
            return None
        if answer is None:
            return 0.0
        stated = read_answer(answer)
        return 1.0 if answers_match(stated or answer, str(problem.answer)) else 0.0
