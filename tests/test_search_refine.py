"""SPaR's refinement search on a scripted policy that plays actor, judge and refiner, with the tree and its
exports hand-checked.

The problem: no commas, at least 8 words. The script (J: the judge's verdicts per call, y/n/? = yes, no,
unparsed; a response without a pattern gets all yes when it satisfies the constraints, else all no)::

    level 0  1 O1 "Rain, wind, gone."                                  J nnnn                 -> 0.0
             2 O2 "My umbrella, sadly, stayed on the bus this morning." J yn?? (tie), nny?   -> 2/5 = 0.4
    kept [2, 1]
    level 1  from 2: 3 "My umbrella sadly stayed on the bus."   J yynn (tie), ynnn            -> 3/8 = 0.375
                     4 "Rain and wind took it."                 J ynnn                        -> 0.25
                     5 "Sadly my umbrella stayed on the bus."                                 -> 0.0
             from 1: "Rain and wind took it." (merges into 4), "Rain, wind, gone." (merges into 1),
                     6 "The wind took it, sadly."                                             -> 0.0
    kept [3, 4]
    level 2  from 3: 7 "My umbrella sadly stayed on the bus all morning."  (passes)         -> 1.0
                     8 "My umbrella stayed on the bus."                                       -> 0.0
                     (7 again: merges)
             from 4: 9 "Rain and wind took my old umbrella away today."    (passes)          -> 1.0
                     10 "Rain and wind took it away.", 11 "Wind took it."                     -> 0.0
    passed: 7 (the best of level 2, the first made of the two at 1.0)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from test_search_common import PlainPolicy, check_golden, run
from treepref.backends.base import Completion
from treepref.domains.instructions import Constraint, passes
from treepref.envs.reasoning import plain_template
from treepref.envs.response import ResponseEnv
from treepref.extract import export
from treepref.problems import Problem
from treepref.search.base import SearchContext
from treepref.search.refine import (JUDGE_TEMPLATE, REFINE_TEMPLATE, RefineConfig, negative_critique, refine,
                                    refine_prompt)
from treepref.tokens import PLAIN
from treepref.tree import ROOT

GOLDEN = Path(__file__).parent / "golden" / "refine_scripted.json"

WORDS = Constraint("length_constraints:number_words", {"relation": "at least", "num_words": 8})
PROBLEM = Problem("u1", "Tell me about a lost umbrella. Do not use any commas. Answer with at least 8 words.",
                  meta={"constraints": [Constraint("punctuation:no_comma").to_dict(), WORDS.to_dict()]})

O1, O2 = "Rain, wind, gone.", "My umbrella, sadly, stayed on the bus this morning."
R2A, R2B, R2C = "My umbrella sadly stayed on the bus.", "Rain and wind took it.", "Sadly my umbrella stayed on the bus."
R1C = "The wind took it, sadly."
R3A, R3B = "My umbrella sadly stayed on the bus all morning.", "My umbrella stayed on the bus."
R4A, R4B, R4C = "Rain and wind took my old umbrella away today.", "Rain and wind took it away.", "Wind took it."
REFINE = {O2: [R2A, R2B, R2C], O1: [R2B, O1, R1C], R2A: [R3A, R3B, R3A], R2B: [R4A, R4B, R4C],
          R1C: [R4C, R1C, R4B]}
JUDGE = {O2: ["yn??", "nny?"], R2A: ["yynn", "ynnn"], R2B: ["ynnn"]}

JUDGE_HEAD = JUDGE_TEMPLATE.split("\n")[0]
REFINE_HEAD = REFINE_TEMPLATE.split("\n")[0]


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class Player(PlainPolicy):
    """Actor, judge and refiner in one, told apart by the prompt's text (the task prompt comes as ids)."""

    def __init__(self, originals=(O1, O2), refine=REFINE, judge=JUDGE):
        self.originals, self.refine, self.judge = list(originals), refine, judge
        self.judged: Counter = Counter()  # judge calls per response
        self.requests: list[tuple[str, int, int, float]] = []  # (kind, prompts, n, temperature)
        self.critiques_given: list[tuple[str, str]] = []  # (response, critique) per refine prompt

    def critique(self, response: str, call: int, i: int, n: int) -> str:
        pattern = self.judge.get(response, [])
        if call < len(pattern):
            v = pattern[call][i % len(pattern[call])]
        else:
            v = "y" if passes(PROBLEM, response) else "n"
        if v == "?":
            return f"Check {call}.{i}: I cannot tell."
        return f"Check {call}.{i}: counted words and commas. Verdict: {'yes' if v == 'y' else 'no'}"

    async def generate(self, prompts, params):
        texts = [p if isinstance(p, str) else PLAIN.decode(p) for p in prompts]
        kind = "judge" if JUDGE_HEAD in texts[0] else "refine" if REFINE_HEAD in texts[0] else "task"
        self.requests.append((kind, len(prompts), params.n, params.temperature))
        out = []
        for t in texts:
            if kind == "judge":
                response = between(t, "Response:\n", "\n\nCheck every")
                call = self.judged[response]
                self.judged[response] += 1
                out.append([self.critique(response, call, i, params.n) for i in range(params.n)])
            elif kind == "refine":
                response = between(t, "Response:\n", "\n\nCritique:\n")
                self.critiques_given.append((response, between(t, "Critique:\n", "\n\nWrite an improved")))
                cands = self.refine[response]
                out.append([cands[i % len(cands)] for i in range(params.n)])
            else:
                out.append([self.originals[i % len(self.originals)] for i in range(params.n)])
        return [[completion(text) for text in texts] for texts in out]


def completion(text: str) -> Completion:
    ids = tuple(PLAIN.encode(text))
    return Completion(text, ids, -float(len(ids)), "stop", None, tuple([-1.0] * len(ids)))


CFG = dict(n_responses=2, judge_k=4, branching=3, keep_top=2, max_levels=3)


def search(policy=None, **options):
    policy = policy or Player()
    ctx = SearchContext(env=ResponseEnv(template=plain_template), policy=policy)
    return run(refine(PROBLEM, ctx, RefineConfig(**{**CFG, **options}))), policy, ctx


def judge_values(tree):
    return {n: tree.scores[n].get("judge") for n in range(1, len(tree))}


def test_the_refinement_tree():
    tree, policy, _ = search()
    texts = [O1, O2, R2A, R2B, R2C, R1C, R3A, R3B, R4A, R4B, R4C]
    assert tree.text[1:] == texts
    assert all(tree.parent[n] == ROOT for n in range(1, len(tree)))  # every response answers the question
    assert [tree.info[n]["level"] for n in range(1, len(tree))] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert {n: tree.info[n].get("refines") for n in range(1, len(tree))} == {
        1: None, 2: None, 3: 2, 4: 2, 5: 2, 6: 1, 7: 3, 8: 3, 9: 4, 10: 4, 11: 4}
    assert judge_values(tree) == {1: 0.0, 2: 0.4, 3: 0.375, 4: 0.25, 5: 0.0, 6: 0.0, 7: 1.0, 8: 0.0, 9: 1.0,
                                  10: 0.0, 11: 0.0}
    assert tree.meta["kept"] == [[2, 1], [3, 4]]  # keep-top-2 by value at each level
    assert tree.meta["stats"] == {"levels": 2, "passed": 7, "refinements": 9, "merged": 3, "dropped": 0,
                                  "judged": 11, "tie_resamples": 2, "no_critique": 0, "passed_originals": []}
    # merges count as samples of the response they repeat
    assert (tree.samples[1], tree.samples[4], tree.samples[7]) == (2, 2, 2)
    # the environment's own verdict on each response, beside the judge's
    assert [n for n in range(1, len(tree)) if tree.info[n]["success"]] == [7, 9]
    assert tree.reward[2] == 0.5 and tree.reward[7] == 1.0 and tree.terminated[7]
    # requests: originals, judge, (refine, judge, tie re-judge) per level
    assert policy.requests == [("task", 1, 2, 0.8), ("judge", 2, 4, 0.7), ("judge", 1, 4, 0.7),
                               ("refine", 2, 3, 0.8), ("judge", 4, 4, 0.7), ("judge", 1, 4, 0.7),
                               ("refine", 2, 3, 0.8), ("judge", 5, 4, 0.7)]
    assert tree.meta["policy_requests"] == 8


def test_values_are_the_share_of_yes_among_parsed_verdicts_with_ties_resampled():
    tree, _, _ = search()
    # node 2: y n ? ? ties 1-1, so 4 more: n n y ?  -> 2 yes, 3 no, 3 unparsed
    assert tree.info[2]["judge"] == {"yes": 2, "no": 3, "unparsed": 3}
    assert [c["verdict"] for c in tree.info[2]["critiques"]] == [True, False, None, None, False, False, True, None]
    assert tree.info[3]["judge"] == {"yes": 3, "no": 5, "unparsed": 0}
    assert tree.info[1]["judge"] == {"yes": 0, "no": 4, "unparsed": 0} and len(tree.info[1]["critiques"]) == 4
    assert tree.value(2) == 0.4 and tree.visits[2] == 1  # backed up once, so Tree.value is the judge value
    assert tree.info[2]["judge_prompt"] == plain_template([{"role": "user", "content": JUDGE_TEMPLATE.format(
        instruction=PROBLEM.question, response=O2)}])


def test_refiner_gets_the_first_negative_critique():
    tree, policy, ctx = search()
    first_no = "Check 0.1: counted words and commas. Verdict: no"
    assert negative_critique(tree, 2) == first_no
    assert policy.critiques_given[0] == (O2, first_no)
    assert [tree.info[n]["critique"] for n in (3, 4, 5)] == [first_no] * 3
    assert tree.info[6]["critique"] == "Check 0.0: counted words and commas. Verdict: no"
    assert tree.info[7]["refine_prompt"] == refine_prompt(ctx, PROBLEM, R2A, negative_critique(tree, 3))


def test_token_exact_contexts_and_golden():
    tree, _, _ = search()
    for n in range(1, len(tree)):
        assert tree.prompt_ids(n) == tree.token_ids[ROOT] + PLAIN.encode(tree.text[n])
        assert tree.prompt_text(n) == tree.rendered[ROOT] + tree.text[n]
    assert tree.meta["generated_tokens"] == sum(len(PLAIN.encode(t)) for t in tree.text[1:]) + sum(
        len(PLAIN.encode(c["text"])) for n in range(1, len(tree)) for c in tree.info[n]["critiques"]) + sum(
        len(PLAIN.encode(t)) for t in (O1, R2B, R3A))  # the merged refinements were generated too
    check_golden(tree, GOLDEN)


def test_stops_at_max_levels_and_max_nodes():
    tree, _, _ = search(max_levels=1)
    assert len(tree) == 7 and tree.meta["stats"]["passed"] is None and tree.meta["kept"] == [[2, 1]]
    tree, _, _ = search(max_nodes=5)
    assert len(tree) == 6 and tree.meta["stats"]["dropped"] == 3 and tree.meta["stats"]["levels"] == 1
    tree, policy, _ = search(max_levels=0)
    assert len(tree) == 3 and [r[0] for r in policy.requests] == ["task", "judge", "judge"]


def test_keep_top_one_refines_only_the_best():
    tree, _, _ = search(keep_top=1)
    assert tree.meta["kept"] == [[2], [3]]
    assert tree.meta["stats"]["passed"] == 6 and tree.text[6] == R3A


def test_a_passing_original_is_kept_and_the_failing_one_refined():
    tree, _, _ = search(Player(originals=(O1, R3A)))
    assert tree.meta["stats"]["passed_originals"] == [2]
    assert tree.meta["kept"][0] == [1]
    assert tree.info[tree.meta["stats"]["passed"]]["level"] == 2


def test_nothing_to_refine_without_a_negative_critique():
    tree, _, _ = search(Player(judge={O1: ["????", "????"], O2: ["????", "????"]}))
    assert tree.meta["stats"]["no_critique"] == 2 and tree.meta["stats"]["levels"] == 0
    assert "judge" not in tree.scores[1] and tree.info[1]["judge"] == {"yes": 0, "no": 0, "unparsed": 8}


def test_config_checks():
    with pytest.raises(ValueError, match="RefineConfig.judge_k must be >= 1"):
        RefineConfig(judge_k=0)
    with pytest.raises(ValueError, match="RefineConfig.max_levels must be >= 0"):
        RefineConfig(max_levels=-1)
    with pytest.raises(ValueError, match="judge_temperature"):
        RefineConfig(judge_temperature=-0.1)


# -- exports -------------------------------------------------------------------------------------------

def rows(tree, fmt, **kw):
    ds, _ = export([tree], fmt, recipe="r", **kw)
    return ds.to_list()


def test_refine_pairs_rows():
    tree, _, _ = search()
    got = rows(tree, "refine_pairs")
    prompt = tree.rendered[ROOT]
    # SPaR's rule: only refinements that pass (value > 0.5), each against the original its chain started from
    assert [(r["chosen"], r["rejected"], r["refinements"]) for r in got] == [(R3A, O2, 2), (R4A, O2, 2)]
    assert got[0] == {"problem_id": "u1", "recipe": "r", "prompt": prompt, "chosen": R3A, "rejected": O2,
                      "critique": tree.info[7]["critique"], "question": PROBLEM.question, "chosen_value": 1.0,
                      "rejected_value": 0.4, "margin": pytest.approx(0.6), "refinements": 2, "strategy": "refines"}


def test_refine_sft_rows():
    tree, _, _ = search()
    got = rows(tree, "refine_sft")
    assert got == [
        {"problem_id": "u1", "recipe": "r", "prompt": tree.info[7]["refine_prompt"], "completion": R3A,
         "critique": "Check 0.2: counted words and commas. Verdict: no", "passed": True,
         "question": PROBLEM.question, "value": 1.0, "refined_value": 0.375, "level": 2, "strategy": "refine_sft"},
        {"problem_id": "u1", "recipe": "r", "prompt": tree.info[9]["refine_prompt"], "completion": R4A,
         "critique": "Check 0.1: counted words and commas. Verdict: no", "passed": True,
         "question": PROBLEM.question, "value": 1.0, "refined_value": 0.25, "level": 2, "strategy": "refine_sft"}]
    assert got[0]["prompt"] == plain_template([{"role": "user", "content": REFINE_TEMPLATE.format(
        instruction=PROBLEM.question, response=R2A, critique=got[0]["critique"])}])


def test_judge_pairs_rows():
    tree, _, _ = search()
    got = rows(tree, "judge_pairs")
    c = lambda call, i, v: f"Check {call}.{i}: counted words and commas. Verdict: {v}"  # noqa: E731
    base = {"problem_id": "u1", "recipe": "r", "question": PROBLEM.question, "majority": "no",
            "response_success": False, "strategy": "judge_majority"}
    assert got == [
        {**base, "prompt": tree.info[2]["judge_prompt"], "chosen": c(0, 1, "no"), "rejected": c(0, 0, "yes"),
         "response": O2, "yes": 2, "no": 3, "margin": 0.2},
        {**base, "prompt": tree.info[3]["judge_prompt"], "chosen": c(0, 2, "no"), "rejected": c(0, 0, "yes"),
         "response": R2A, "yes": 3, "no": 5, "margin": 0.25},
        {**base, "prompt": tree.info[4]["judge_prompt"], "chosen": c(0, 1, "no"), "rejected": c(0, 0, "yes"),
         "response": R2B, "yes": 1, "no": 3, "margin": 0.5}]
