"""Final answers of math problems: find them in model text and decide whether two are the same value.

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


_ANSWER_IS_RE = re.compile(r"answer is[:\s]*(.+?)\s*(?:\.\s*)?$", re.IGNORECASE | re.MULTILINE)
_HASHES_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``: last ``\\boxed{}``, else last "answer is X", else "#### X"."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (_ANSWER_IS_RE, _HASHES_RE):
        found = pattern.findall(text)
        if found:
            answer = found[-1].strip().strip("$").strip().rstrip(".").strip()
            if answer:
                return answer
    return None


# -- normalisation ------------------------------------------------------------------------------------
_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "5 cm", "5cm", "12 dollars" -> the number; "2x" (one letter, no space) is algebra and stays.
_UNIT_WORDS_RE = re.compile(r"^(-?[\d.]+(?:/\d+)?)(?:\s+[a-zA-Z][a-zA-Z. ]*|[a-zA-Z]{2,}[a-zA-Z. ]*)$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")


def normalize_answer(text: str) -> str:
    """A canonical spelling of an answer; equal spellings are equal answers (the converse needs sympy)."""
    s = text.strip()
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


@lru_cache(maxsize=65536)
def answers_match(pred: str, ref: str) -> bool:
    """Whether a predicted final answer equals the reference (order matters only for math-verify's gold).

    Plain numbers compare exactly (``1/2 == \\frac{1}{2} == 0.5``, ``1,234 == 1234``); word answers
    compare as case-insensitive text (sympy would read ``Monday`` as a product of symbols); everything
    else (``\\sqrt{2}/2``, intervals, tuples, expressions) goes to math-verify.
    """
    if not pred or not ref or len(pred) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        return bool(pred) and pred.strip() == (ref or "").strip()
    p, r = normalize_answer(pred), normalize_answer(ref)
    if not p or not r:
        return False
    if p == r or p.replace(" ", "") == r.replace(" ", ""):
        return True
    pf, rf = _as_fraction(p), _as_fraction(r)
    if pf is not None and rf is not None:
        return pf == rf
    if re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", p) and re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", r):
        return p.lower() == r.lower()
    return _math_verify(r, p)


class MathVerifier:
    """Outcome verifier for math answers: 1.0 right, 0.0 wrong, None when the problem has no reference.

    ``answer`` may be the bare final answer or a whole text that states one (boxed, "answer is ...").
    """

    async def __call__(self, problem: Problem, answer: str | None) -> float | None:
        if problem.answer is None:
            return None
        if answer is None:
            return 0.0
        stated = extract_answer(answer) if ("boxed" in answer or "answer is" in answer.lower()
                                            or "####" in answer) else None
        return 1.0 if answers_match(stated or answer, str(problem.answer)) else 0.0
