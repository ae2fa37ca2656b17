"""The evaluator seam: MCTS values new nodes by the configured evaluator, and the backed-up Q is what each
kind gives, hand-computed on a scripted policy (a mix weights its parts as configured)."""

from __future__ import annotations

import math

import pytest

from test_search_common import PROBLEM, make_ctx, node_by_steps, run
from treepref.backends.scripted import ScriptedPolicy
from treepref.search import build_config
from treepref.search.evaluators import parse
from treepref.search.mcts import mcts
from treepref.tokens import PLAIN

SCRIPT = {(): [("good step", -1.0), ("bad step", -1.0)],
          ("good step",): ["The answer is 2."], ("bad step",): ["The answer is 3."]}


async def toy_scorer(problems, steps):
    """A step scorer: 1 for a step saying good, 0 for bad, None (cannot judge) otherwise."""
    return [[1.0 if "good" in s else 0.0 if "bad" in s else None for s in path] for path in steps]


class Critic(ScriptedPolicy):
    """The scripted policy, also a judge (verdicts by whether the candidate says good) and a scorer of
    "correct"/"incorrect" continuations (P = 0.8 for a good candidate, 0.2 otherwise) for self-evaluation."""

    async def generate(self, prompts, params):
        texts = [p if isinstance(p, str) else PLAIN.decode(p) for p in prompts]
        if any("You are checking one step" in t for t in texts):
            out = []
            for t in texts:
                verdict = "correct" if "good" in t.split("Candidate next step:")[1] else "incorrect"
                out.append([self._verdict(f"Looks fine. Verdict: {verdict}") for _ in range(params.n)])
            return out
        return await super().generate(prompts, params)

    @staticmethod
    def _verdict(text):
        from treepref.backends.base import Completion

        ids = tuple(PLAIN.encode(text))
        return Completion(text, ids, -1.0, "stop", None, tuple([-1.0 / len(ids)] * len(ids)))

    def score(self, prompts, continuations):
        out = []
        for p, c in zip(prompts, continuations):
            p_good = 0.8 if "good" in p.split("New step:")[1] else 0.2
            out.append(math.log(p_good if c == " correct" else 1 - p_good))
        return out


def search(evaluator, simulations, policy_cls=ScriptedPolicy, c_puct=10.0):
    ctx = make_ctx(SCRIPT)
    ctx.policy = policy_cls(SCRIPT)
    cfg = build_config("mcts", {"simulations": simulations, "k": 2, "c_puct": c_puct, "evaluator": evaluator})
    return run(mcts(PROBLEM, ctx, cfg))


def test_constant():
    tree = search({"kind": "constant", "value": 0.3}, simulations=1)
    assert tree.value(0) == pytest.approx(0.3) and tree.scores[0]["constant"] == 0.3


def test_step_scorer_min_over_the_path():
    # sim 1: the root (no step judged: default 0.5); sim 2: "good step" (PUCT tie, first made) = 1.0;
    # sim 3: c_puct 10 sends it to the unvisited "bad step" = 0.0
    tree = search({"kind": "steps", "scorer": "test_evaluators:toy_scorer", "aggregate": "min"}, simulations=3)
    good, bad = node_by_steps(tree, ["good step"]), node_by_steps(tree, ["bad step"])
    assert (tree.value(good), tree.value(bad)) == (1.0, 0.0)
    assert tree.value(0) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert tree.scores[good]["steps"] == 1.0 and tree.visits[good] == tree.visits[bad] == 1


def test_judge_pass_rate():
    tree = search({"kind": "judge", "k": 4}, simulations=3, policy_cls=Critic)
    good, bad = node_by_steps(tree, ["good step"]), node_by_steps(tree, ["bad step"])
    assert (tree.value(good), tree.value(bad)) == (1.0, 0.0)  # 4 of 4 verdicts, 0 of 4
    assert tree.info[good]["judge"] == {"passed": 4, "parsed": 4, "total": 4}
    assert tree.value(0) == pytest.approx(1 / 3)  # the root's empty candidate is judged incorrect


def test_self_evaluation():
    tree = search({"kind": "self_eval"}, simulations=3, policy_cls=Critic)
    good, bad = node_by_steps(tree, ["good step"]), node_by_steps(tree, ["bad step"])
    assert tree.value(good) == pytest.approx(0.8) and tree.value(bad) == pytest.approx(0.2)
    assert tree.value(0) == pytest.approx((0.2 + 0.8 + 0.2) / 3)


def test_mix_weights_outcome_and_self_evaluation():
    """MCTS-DPO's mix: (1 · rollout outcome + 3 · self-eval) / 4."""
    spec = {"kind": "mix", "parts": [{"kind": "rollouts", "n": 1, "weight": 1},
                                     {"kind": "self_eval", "weight": 3}]}
    tree = search(spec, simulations=2, policy_cls=Critic)
    good = node_by_steps(tree, ["good step"])
    root_value = (1 * 1.0 + 3 * 0.2) / 4  # the root's completion follows "good step" to the right answer
    good_value = (1 * 1.0 + 3 * 0.8) / 4
    assert tree.scores[0]["mix"] == pytest.approx(root_value)
    assert tree.value(good) == pytest.approx(good_value)
    assert tree.value(0) == pytest.approx((root_value + good_value) / 2)
    # the completions are still paths of the tree, but the mix is backed up from the node it valued
    assert node_by_steps(tree, ["good step", "The answer is 2."]) > 0


def test_rollouts_evaluator_is_the_default_rule():
    default = search(None, simulations=4)
    explicit = search({"kind": "rollouts", "n": 1}, simulations=4)
    assert default.visits == explicit.visits and default.value_sum == explicit.value_sum


@pytest.mark.parametrize("spec, message", [
    ({"kind": "oracle"}, "evaluator.kind: unknown evaluator kind 'oracle' \\(known: "),
    ({"kind": "constant"}, "needs 'value'"),
    ({"kind": "rollouts", "n": 0}, "n must be an integer >= 1"),
    ({"kind": "steps", "scorer": "test_evaluators:toy_scorer", "aggregate": "median"}, "unknown aggregator"),
    ({"kind": "steps", "scorer": "nowhere:nothing"},
     "evaluator.scorer: step scorer 'nowhere:nothing': no module named 'nowhere'"),
    ({"kind": "prm", "model": "/no/such/folder"}, "no folder"),
    ({"kind": "mix", "parts": [{"kind": "constant", "value": 1, "weight": -1}]}, r"parts\[0\].weight"),
    ({"kind": "judge", "k": 2, "temp": 1}, "unknown option 'temp'"),
])
def test_bad_specs_name_the_option(spec, message):
    with pytest.raises(ValueError, match=message):
        parse(spec)


def test_a_recipe_with_a_bad_evaluator_is_a_config_error():
    from treepref.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="evaluator.kind 'oracle'"):
        config_from_dict({"search": {"name": "mcts", "options": {"evaluator": {"kind": "oracle"}}}}, "r.yaml")


def test_beam_ranks_by_the_evaluator():
    from treepref.search.beam import beam

    ctx = make_ctx(SCRIPT)
    cfg = build_config("beam", {"beam_width": 1, "k": 2, "max_depth": 2,
                                "evaluator": {"kind": "steps", "scorer": "test_evaluators:toy_scorer"}})
    tree = run(beam(PROBLEM, ctx, cfg))
    good, bad = node_by_steps(tree, ["good step"]), node_by_steps(tree, ["bad step"])
    assert (tree.scores[good]["beam"], tree.scores[bad]["beam"]) == (1.0, 0.0)
    assert tree.meta["beams"][0] == [good]  # the step the scorer prefers is the one kept
