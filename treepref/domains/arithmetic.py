"""Built-in multi-step arithmetic: problems whose every step can be checked exactly.

This is the label-quality yardstick: a preference pair is right when its chosen step's arithmetic is
right and its rejected step's is wrong, and here that is a fact rather than a model's opinion. Problems
are a left-to-right chain of ``+ - *`` on integers (parenthesised where precedence would reorder it), so
the intended order of operations is the reading order and every intermediate is an exact integer.

Generation is deterministic from ``(seed, difficulty, index)`` through a string-seeded ``random.Random``
(SHA-512 based, independent of ``PYTHONHASHSEED``), so problem ``i`` is the same whatever ``count`` is.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from treepref.problems import Problem, Shot

INSTRUCTION = "Work one operation per step."

# Worked examples in the format the checker reads: one equation per step, then the answer line
# (``env.few_shot: arithmetic``), for problems of mixed length. They cover + - * and a parenthesised product.
# A small model copies the examples' length as much as their format, so for problems of one length
# ``worked_examples(difficulty)`` (``env.few_shot: arithmetic:<difficulty>``) is the better choice. Like those,
# each starts above the operand range of problems of its length, so none can equal a problem.
FEW_SHOT = (
    Shot(f"Compute (24 + 7) * 3. {INSTRUCTION}", ("24 + 7 = 31", "31 * 3 = 93", "The answer is 93.")),
    Shot(f"Compute 17 - 6. {INSTRUCTION}", ("17 - 6 = 11", "The answer is 11.")),
    Shot(f"Compute 23 * 2 + 5. {INSTRUCTION}", ("23 * 2 = 46", "46 + 5 = 51", "The answer is 51.")),
)


def make_problem(seed: int, index: int, difficulty: int = 3) -> Problem:
    """Problem ``index`` of the ``seed`` stream: ``difficulty`` operations, numbers growing with it."""
    return _make(seed, index, difficulty, example=False)


def _make(seed: int | str, index: int, difficulty: int, *, example: bool) -> Problem:
    """A worked example (``example=True``) starts from a number just above the problems' range, so it can
    never equal a problem: a small model shown the very question it is asked copies the answer."""
    n_ops = int(difficulty)
    if n_ops < 1:
        raise ValueError(f"difficulty is the number of operations and must be >= 1, got {difficulty}")
    stream = "treepref-arithmetic-examples" if example else "treepref-arithmetic"
    rng = random.Random(f"{stream}:{seed}:{n_ops}:{index}")
    high = 9 + 6 * n_ops  # operand range for + and -
    value = rng.randint(high + 1, high + 10) if example else rng.randint(2, high)
    expr, top = str(value), ""  # top: the operator applied last (decides where parentheses go)
    intermediates: list[int] = []
    steps: list[str] = []  # the reference solution, one operation per step
    for _ in range(n_ops):
        op = rng.choice("+-*")
        if op == "*" and value > 200:
            op = rng.choice("+-")  # keep numbers a small model can still multiply
        if op == "-" and value < 3:
            op = "+"  # stay non-negative: negatives add notation, not reasoning
        if op == "*":
            operand = rng.randint(2, min(9, 2 + n_ops))
            value *= operand
        elif op == "-":
            operand = rng.randint(1, min(high, value - 1))
            value -= operand
        else:
            operand = rng.randint(2, high)
            value += operand
        steps.append(f"{intermediates[-1] if intermediates else expr} {op} {operand} = {value}")
        left = f"({expr})" if op == "*" and top in ("+", "-") else expr
        expr, top = f"{left} {op} {operand}", op
        intermediates.append(value)
    return Problem(
        id=f"arith-{seed}-{index}",
        prompt=f"Compute {expr}. {INSTRUCTION}",
        answer=str(value),
        meta={"difficulty": n_ops, "expression": expr, "intermediates": intermediates, "steps": steps},
    )


# Worked examples come from a stream of their own and start above the problems' operand range (``_make``).
_EXAMPLE_SEED = "worked"


def worked_examples(difficulty: int | None = None, count: int = 3) -> tuple[Shot, ...]:
    """Few-shot examples for problems of ``difficulty`` operations: ``count`` problems of the same length
    with their reference steps and answer line. ``None``: the fixed mixed-length set ``FEW_SHOT``."""
    if difficulty is None:
        return FEW_SHOT
    examples = []
    for i in range(count):
        p = _make(_EXAMPLE_SEED, i, difficulty, example=True)
        examples.append(Shot(p.prompt, (*p.meta["steps"], f"The answer is {p.answer}.")))
    return tuple(examples)


def generate(count: int, *, seed: int = 0, difficulty: int = 3) -> list[Problem]:
    """``count`` arithmetic problems; the same ``(seed, difficulty)`` always gives the same list."""
    return [make_problem(seed, i, difficulty) for i in range(count)]


# -- exact step checking ------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([-+*/()])|(\S))")
_SIDE = r"[0-9.+\-*/() \t]*"
_LEFT_RE = re.compile(_SIDE + r"$")
_RIGHT_RE = re.compile(r"^" + _SIDE)


def _normalize(text: str) -> str:
    """Rewrite the notations models use for arithmetic into ``0-9 + - * / ( )``."""
    s = re.sub(r"\\left|\\right", "", text)
    s = re.sub(r"\\(?:times|cdot)|[×·∗⋅]", "*", s)
    s = re.sub(r"\\div|÷", "/", s)
    s = s.replace("−", "-").replace("–", "-")
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
    s = re.sub(r"(?<=\d)(?:,|\{,\}|\\,)(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = re.sub(r"\\(?:boxed|text|mathrm|mathbf)|\\\$|\$|\\[()\[\]]|[{}]", " ", s)
    s = re.sub(r"(?<![\d)])\*\*|\*\*(?![\d(])", " ", s)  # markdown bold, not a power
    s = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", "*", s)
    s = re.sub(r"^[ \t]*(?:[-*•]|\d+[.)])[ \t]+", "", s, flags=re.MULTILINE)  # list markers
    return s


def _tokens(text: str) -> list[str]:
    return [m.group(1) or m.group(2) or m.group(3) for m in _TOKEN_RE.finditer(text) if m.group(0).strip()]


def _evaluate(tokens: list[str]) -> Fraction | None:
    """Exact value of a complete ``+ - * / ( )`` expression over decimals, or None (no ``eval``)."""
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr() -> Fraction:
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term() -> Fraction:
        value = factor()
        while peek() in ("*", "/"):
            if take() == "*":
                value *= factor()
            else:
                value /= factor()  # ZeroDivisionError: caught below
        return value

    def factor() -> Fraction:
        tok = peek()
        if tok in ("-", "+"):
            take()
            return -factor() if tok == "-" else factor()
        if tok == "(":
            take()
            value = expr()
            if take() != ")":
                raise ValueError("unbalanced")
            return value
        if tok is not None and tok[0].isdigit():
            return Fraction(take())
        raise ValueError("expected a number")

    try:
        value = expr()
    except (ValueError, IndexError, ZeroDivisionError):
        return None
    return value if pos == len(tokens) else None


def _n_numbers(tokens: list[str]) -> int:
    return sum(t[0].isdigit() for t in tokens)


# A verbal "=": only between an expression that ends in a digit or ")" and a number, so "the answer is 4"
# (nothing before "is") and "Step 2 is 36" (no operation on the left, checked below) are not equations.
_EQUALS_RE = re.compile(
    r"(?<![<>!=])=(?!=)"
    r"|(?<=[\d)])[ \t]+(?i:is[ \t]+equal[ \t]+to|equals|gives|makes|is)(?=[ \t]+-?\d)"
)
_WORD_RIGHT_RE = re.compile(r"[ \t]*(-?\d+(?:\.\d+)?)(?![\d.]*[ \t]*[-+*/][ \t]*[\d(])")


def equations(step_text: str) -> list[tuple[str, str, bool]]:
    """Every ``<expression> = <expression>`` in the step as ``(left, right, holds)``.

    The left side is the longest arithmetic run before ``=`` that parses, the right side the longest that
    parses after it (so ``(7 + 5) * 3 = 12 * 3 = 36`` is two equations, both true). An equation counts
    only when one side has an operation in it (``Step 2 = 36`` is a label, not arithmetic).

    ``equals``, ``is equal to``, ``gives``, ``makes`` and ``is`` count as ``=`` only when their left side
    has an operation and their right side is a single number (``13 + 3 equals 16``); a number followed by
    more arithmetic (``is 16 + 0``) is ambiguous and skipped, and prose such as ``the answer is 4`` (no
    expression on the left) is not an equation.
    """
    s = _normalize(step_text)
    found = []
    for m in _EQUALS_RE.finditer(s):
        left_tokens = _tokens(_LEFT_RE.search(s[:m.start()]).group(0))
        left = next(((left_tokens[i:], v) for i in range(len(left_tokens))
                     if (v := _evaluate(left_tokens[i:])) is not None), None)
        if m.group(0).strip() == "=":
            right_tokens = _tokens(_RIGHT_RE.search(s[m.end():]).group(0))
            right = next(((right_tokens[:j], v) for j in range(len(right_tokens), 0, -1)
                          if (v := _evaluate(right_tokens[:j])) is not None), None)
            if left is None or right is None or max(_n_numbers(left[0]), _n_numbers(right[0])) < 2:
                continue
        else:  # a word: an operation on the left, exactly one number on the right
            number = _WORD_RIGHT_RE.match(s, m.end())
            if left is None or number is None or _n_numbers(left[0]) < 2:
                continue
            right_tokens = _tokens(number.group(1))
            right = (right_tokens, _evaluate(right_tokens))
        found.append((" ".join(left[0]), " ".join(right[0]), left[1] == right[1]))
    return found


def check_step(problem: Problem | None, step_text: str, prefix: Sequence[str] = ()) -> bool | None:
    """Whether the arithmetic stated in a step is right: False if any equation is wrong, True if all are
    right (at least one), None when the step states no equation and so cannot be judged.

    Tolerates ``×``, ``x``, ``\\times``, ``\\cdot``, ``−``, thousands separators, ``$...$`` and trailing
    periods. ``problem`` and ``prefix`` (the steps before this one) are not needed for the check itself;
    they are in the signature so every step check has the same shape (``verifiers.step_check``).
    """
    found = equations(step_text)
    if not found:
        return None
    return all(holds for _, _, holds in found)


_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def _number_list(text: str) -> list[Fraction]:
    """Every number the text writes, in order, repeats kept."""
    return [Fraction(n) for n in _NUMBER_RE.findall(_normalize(text))]


def _numbers(text: str) -> set[Fraction]:
    return set(_number_list(text))


def _sides(left: str, right: str) -> tuple[str, str]:
    """An equation's computing side and its result side: the left unless it holds a single number
    ("36 = 12 * 3" computes on the right)."""
    return (left, right) if _n_numbers(left.split()) >= 2 else (right, left)


def grounded_step(problem: Problem, step_text: str, prefix: Sequence[str] = ()) -> bool | None:
    """The ``arithmetic_grounded`` step check: the step's equations hold (:func:`check_step`) and compute
    only with numbers the problem states (its ``meta["expression"]``, else its prompt) or that an earlier
    step, or an earlier equation of this step, wrote. None when the step states no equation.

    A true equation on an invented number (``2 + 7 = 9`` toward ``3 + 25 + 11 - 7``) passes the plain
    check, and SmolLM2-135M strings such steps into paths that land on the right answer by luck
    (``2 + 7 = 9``, ``9 * 4 = 36``, ``36 - 4 = 32``); so does a no-op (``7 * 1 = 7``). Neither reads the
    reference solution. It suits problems that state every number they need (the built-in arithmetic);
    word problems with unstated constants (a dozen, a percentage) want the plain ``arithmetic`` check.
    """
    found = equations(step_text)
    if not found:
        return None
    if not all(holds for _, _, holds in found):
        return False
    meta = getattr(problem, "meta", None) or {}
    known = _numbers(meta.get("expression") or problem.prompt)
    for step in prefix:
        known |= _numbers(step)
    for left, right, _ in found:
        computing, _ = _sides(left, right)
        if not _numbers(computing) <= known:
            return False
        known |= _numbers(left) | _numbers(right)
    return True


def derived_step(problem: Problem, step_text: str, prefix: Sequence[str] = ()) -> bool | None:
    """The ``arithmetic_derived`` step check: :func:`grounded_step`, and a step stating the final answer must
    state the result of a derivation that uses every number the problem states.

    The answer's derivation is the latest equation of the path (earlier steps, then this one) whose result is
    the answer, with, for each of its operands, the latest earlier equation that produced that value, and so
    on back; an operand the problem states counts as used either way (so ``3 + 3`` after ``9 - 6 = 3`` uses
    both threes of ``9 - 6 + 3``). At three operations SmolLM2-135M lands on the answer by luck with true,
    grounded steps that leave part of the problem out (``4 * 2 = 8``, ``2 + 17 = 19`` for
    ``(4 - 3) * 2 + 17``): the grounded check passes them, and a search that widens successful paths would
    multiply every pair under such a path. An answer no equation computed (stated bare) fails too. It reads
    no reference solution, only the problem's numbers and the path.
    """
    verdict = grounded_step(problem, step_text, prefix)
    if verdict is False:
        return False
    from treepref.verifiers.math import read_answer

    stated = read_answer(step_text)
    try:
        answer = Fraction(stated.replace(",", "")) if stated is not None else None
    except ValueError:
        return verdict  # not a number: the outcome verifier judges it
    if answer is None:
        return verdict
    chain = []  # (operands, result) of every equation on the path, in order
    for text in (*prefix, step_text):
        for left, right, _ in equations(text):
            computing, result = _sides(left, right)
            value = _evaluate(result.split())
            if value is not None:
                chain.append((_number_list(computing), value))
    meta = getattr(problem, "meta", None) or {}
    given = _numbers(meta.get("expression") or problem.prompt)
    last = next((i for i in range(len(chain) - 1, -1, -1) if chain[i][1] == answer), None)
    if last is None:
        return False
    used, todo, seen = set(), [last], set()
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        for operand in chain[i][0]:
            if operand in given:
                used.add(operand)
            producer = next((j for j in range(i - 1, -1, -1) if chain[j][1] == operand), None)
            if producer is not None:
                todo.append(producer)
    return given <= used


def counted_step(problem: Problem, step_text: str, prefix: Sequence[str] = ()) -> bool | None:
    """The ``arithmetic_counted`` step check: :func:`derived_step`, and no equation of the step uses a number
    more often than the path has it.

    The path has each number the problem states, and each number an earlier equation wrote on its result side
    (or a step wrote outside any equation), once per time; an equation's operands use them up. So
    ``1 * 1 = 1`` after ``3 - 2 = 1`` (one 1 in ``(3 - 2) * 2 * 3``) fails, and so does ``23 * 1 = 23`` after
    ``10 - 7 - 1 + 21 = 23`` (its 1 is spent): true, grounded steps that compute nothing, which SmolLM2-135M
    strings into three-operation paths that still reach the answer. An equation that restates an earlier
    one (the same operands and result, ``The answer is 21 - 1 = 20.`` after ``21 - 1 = 20``) uses nothing. Like
    the others it reads no reference solution. It is stricter than the exact oracle's ``on_track``, which
    counts ``2 * 2 = 4`` toward ``(5 - 1) * 2 + 15`` as right because 4 is an intermediate; it also fails
    a true rewrite that spends a number twice (``4 + 4 = 8`` for ``4 * 2``) or restates a whole computation
    whose numbers are spent (``(5 - 3) * 2 = 2 * 2 = 4`` after ``5 - 3 = 2``).
    """
    verdict = derived_step(problem, step_text, prefix)
    if verdict is not True:
        return verdict
    meta = getattr(problem, "meta", None) or {}
    have = Counter(_number_list(meta.get("expression") or problem.prompt))
    stated: set = set()
    for step in prefix:
        _spend(step, have, stated)  # earlier steps were judged when they were taken
    return _spend(step_text, have, stated)


def _spend(text: str, have: Counter, stated: set) -> bool:
    """Use up the operands of ``text``'s equations from ``have`` and add what it writes; whether every operand
    was there. ``stated``: the (operands, result) of the equations seen so far, which a restatement repeats."""
    ok, in_equations = True, Counter()
    for left, right, _ in equations(text):
        computing, result = _sides(left, right)
        operands, written = Counter(_number_list(computing)), Counter(_number_list(result))
        in_equations += operands + written
        key = (tuple(sorted(operands.elements())), _evaluate(result.split()))
        if key not in stated:  # a restatement uses nothing up; what it writes is there either way
            stated.add(key)
            ok = ok and all(have[n] >= k for n, k in operands.items())
            have.subtract(operands)
        have += written  # (adding a Counter also drops what went below zero)
    have.update(Counter(_number_list(text)) - in_equations)  # numbers stated in prose
    return ok


def on_track(problem: Problem, step_text: str) -> bool | None:
    """Whether a step is a right step toward *this* problem's answer: None when the step states no
    equation, False if any equation is wrong, True only if every equation's value is one of the problem's
    ``meta["intermediates"]`` and every side with an operation in it uses only numbers from the problem's
    expression or intermediates before that one; False otherwise.

    :func:`check_step` judges the step's own arithmetic, so ``13 * 3 = 39`` is right for "Compute 13 + 3"
    and ``2 + 2 = 4`` is right for "Compute 7 - 2 + 2" although it leads away from 7. ``on_track`` judges
    whether the step advances this problem's solution, which is the ground truth a Monte Carlo label
    (can the answer still be reached from here?) is estimating. It is conservative: a right step along
    another route than the left-to-right chain (``7 + 2 = 9`` toward ``7 - 2 + 2``) counts as off track,
    and a step that combines the problem's numbers differently but happens to hit an intermediate counts
    as on track.
    """
    meta = getattr(problem, "meta", None) or {}
    if "intermediates" not in meta or "expression" not in meta:
        raise ValueError("on_track needs an arithmetic problem (meta['expression'] and meta['intermediates'])")
    found = equations(step_text)
    if not found:
        return None
    if not all(holds for _, _, holds in found):
        return False
    given = {Fraction(n) for n in re.findall(r"\d+", meta["expression"])}
    values = [Fraction(v) for v in meta["intermediates"]]
    for left, right, _ in found:
        value = _evaluate(right.split())
        operands = [Fraction(t) for side in (left, right) if _n_numbers(side.split()) >= 2
                    for t in side.split() if t[0].isdigit()]
        if not any(v == value and all(x in given or x in values[:k] for x in operands)
                   for k, v in enumerate(values)):
            return False
    return True


async def arithmetic_step_scorer(problems: list[Problem], steps: list[list[str]]) -> list[list[float | None]]:
    """StepScorer: 1.0 / 0.0 per step by :func:`check_step`, None for steps without an equation."""
    out = []
    for problem, path in zip(problems, steps):
        row = []
        for step in path:
            ok = check_step(problem, step)
            row.append(None if ok is None else float(ok))
        out.append(row)
    return out


def is_correct_path(problem: Problem, steps: list[str]) -> bool:
    """A path is correct when no step's arithmetic is wrong, at least one step could be checked, and a
    stated final answer (if any) equals the reference exactly."""
    from treepref.verifiers.math import extract_answer

    checks = [check_step(problem, s) for s in steps]
    if False in checks or True not in checks:
        return False
    stated = extract_answer("\n\n".join(steps))
    if stated is None or problem.answer is None:
        return True
    value = _evaluate(_tokens(_normalize(stated).strip().rstrip(".")))
    return value is not None and value == Fraction(problem.answer)
