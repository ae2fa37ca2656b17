"""Label quality of step pairs on the built-in arithmetic domain, where every step can be checked exactly.

Each step gets a class (:func:`classify_step`): ``right`` (its arithmetic holds and it is a step of this
problem's solution, or it states the reference answer), ``wrong`` (an equation is false, or it states
another answer), ``off`` (right arithmetic that is not a step of this solution), ``repeat`` (the same text
as an earlier step of the path) or ``prose`` (no equation, no answer).

A pair is *good* when every step of its prefix is right, its chosen step is right and its rejected step
is wrong or off: only then does it teach "take the right step here" on a state worth being in. Every
other pair is counted too, in a named bucket, and every share is over ALL pairs. Judging only the pairs
whose two sides both contain an equation hides the pairs with a broken prefix, a prose or repeated side,
or two right sides, and so made runs look far better than their data was (75% right against 47% good).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from treepref.domains.arithmetic import check_step, on_track
from treepref.problems import Problem
from treepref.verifiers.math import answers_match, read_answer as _read_answer

AnswerReader = Callable[[str], "str | None"]

# The final-answer reader (text -> the answer it states, or None); swap it here.
READ_ANSWER: AnswerReader = _read_answer

STEP_CLASSES = ("right", "wrong", "off", "repeat", "prose")

# "uncheckable" is the sum of the last four: pairs that hold no arithmetic preference between a right and
# a not-right step (two right sides, two not-right sides, a not-right step over prose, prose chosen).
UNCHECKABLE = ("both_right", "both_wrong", "wrong_over_prose", "prose_chosen")
BUCKETS = ("good", "inverted", "bad_prefix", "junk_rejected", *UNCHECKABLE)


def _norm(text: str) -> str:
    return " ".join(text.split())


def classify_step(problem: Problem, prefix_steps: Sequence[str], step: str,
                  *, read_answer: AnswerReader | None = None) -> str:
    """One of ``STEP_CLASSES`` for ``step`` taken after ``prefix_steps`` on ``problem``.

    In order: ``repeat`` if the step (whitespace-normalised) equals an earlier step; a step stating a final
    answer is ``right`` when the answer equals the reference and none of its equations is false, else
    ``wrong``; a step with equations is ``wrong`` if one is false, ``right`` if it is on track
    (:func:`~treepref.domains.arithmetic.on_track`), ``off`` otherwise; anything else is ``prose``.
    """
    text = _norm(step)
    if any(_norm(s) == text for s in prefix_steps):
        return "repeat"
    checked = check_step(problem, step)
    stated = (read_answer or READ_ANSWER)(step)
    if stated is not None:
        ref = problem.answer
        return "right" if checked is not False and ref is not None and answers_match(stated, str(ref)) else "wrong"
    if checked is None:
        return "prose"
    if checked is False:
        return "wrong"
    return "right" if on_track(problem, step) else "off"


ERRORS = ("wrong", "off")  # the step classes that count as a process error (ProcessBench's label)


def first_error(problem: Problem, steps: Sequence[str], *, read_answer: AnswerReader | None = None) -> int:
    """The index of a solution's first erroneous step by the exact oracle, -1 when it has none: the truth a
    ProcessBench-style score (``train.evaluate.first_error_f1``) compares a PRM's guess with. An error is a
    step ``classify_step`` calls ``wrong`` (a false equation, a wrong answer) or ``off`` (true arithmetic
    that is no step of this solution: the path has left it); prose and repeats are no error."""
    for i, step in enumerate(steps):
        if classify_step(problem, steps[:i], step, read_answer=read_answer) in ERRORS:
            return i
    return -1


def _bucket(prefix: list[str], chosen: str, rejected: str) -> str:
    if any(c != "right" for c in prefix):
        return "bad_prefix"
    not_right = ("wrong", "off")
    if chosen == "right":
        return {"right": "both_right", "wrong": "good", "off": "good"}.get(rejected, "junk_rejected")
    if chosen in not_right:
        return {"right": "inverted", "wrong": "both_wrong", "off": "both_wrong"}.get(rejected, "wrong_over_prose")
    return "prose_chosen"


def classify_pair(row: dict, problems: Mapping[str, Problem], *, read_answer: AnswerReader | None = None,
                  delimiter: str = "\n\n") -> tuple[str, list[str], str, str]:
    """One export row's bucket, with the classes of its prefix steps, chosen and rejected step."""
    pid = row["problem_id"]
    problem = problems.get(pid)
    if problem is None:
        raise ValueError(f"label quality: problem {pid!r} of an export row is not among the given problems")
    prefix = [_text(s, delimiter) for s in row.get("prefix_steps") or []]
    prefix_cls = [classify_step(problem, prefix[:i], s, read_answer=read_answer) for i, s in enumerate(prefix)]
    chosen = classify_step(problem, prefix, _text(row["chosen"], delimiter), read_answer=read_answer)
    rejected = classify_step(problem, prefix, _text(row["rejected"], delimiter), read_answer=read_answer)
    return _bucket(prefix_cls, chosen, rejected), prefix_cls, chosen, rejected


def pair_label_quality(rows: Iterable[dict], problems: Mapping[str, Problem], *,
                       read_answer: AnswerReader | None = None, delimiter: str = "\n\n") -> dict:
    """Counts of every pair bucket (``BUCKETS``, plus ``uncheckable``) and of every step class, and each
    bucket's share of ALL pairs (``<bucket>_share``; None when there are no pairs).

    ``rows`` are step-pair export rows (``problem_id``, ``prefix_steps``, ``chosen``, ``rejected``; the
    two sides a string ending in ``delimiter`` or a list of messages). Each prefix step is classified after
    the steps before it, then chosen and rejected after the whole prefix. ``steps`` counts the classes of
    chosen, rejected and prefix steps (every prefix step of every pair, so a shared prefix counts once per
    pair). ``problems_with_good`` counts the problems with at least one good pair. A row whose problem is not
    in ``problems`` raises ValueError.
    """
    counts: dict = {"pairs": 0, **{b: 0 for b in BUCKETS}}
    steps = {side: dict.fromkeys(STEP_CLASSES, 0) for side in ("chosen", "rejected", "prefix")}
    good_problems: set = set()
    for row in rows:
        bucket, prefix_cls, chosen, rejected = classify_pair(row, problems, read_answer=read_answer,
                                                             delimiter=delimiter)
        for c in prefix_cls:
            steps["prefix"][c] += 1
        steps["chosen"][chosen] += 1
        steps["rejected"][rejected] += 1
        counts["pairs"] += 1
        counts[bucket] += 1
        if bucket == "good":
            good_problems.add(row["problem_id"])
    counts["uncheckable"] = sum(counts[b] for b in UNCHECKABLE)
    n = counts["pairs"]
    for b in (*BUCKETS, "uncheckable"):
        counts[f"{b}_share"] = counts[b] / n if n else None
    counts["steps"] = steps
    counts["problems_with_good"] = len(good_problems)
    return counts


def _text(value, delimiter: str = "\n\n") -> str:
    """A completion in either TRL layout (a string, or a list of messages), without its delimiter."""
    if not isinstance(value, str):
        value = "".join(m.get("content", "") for m in value)
    if delimiter and value.endswith(delimiter):
        value = value[:-len(delimiter)]
    return value.strip()
