"""Preference and verifier losses on hand-computed cases: values, weights, masks and the sign of every
gradient (one SGD step must move chosen over rejected).

Expected numbers are written out with ``math``; ``softplus(x) = log(1 + e^x)`` so ``-logsigmoid(z)`` is
``softplus(-z)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from treepref.train.losses import (
    LossOutput,
    advantage_mse,
    bradley_terry_loss,
    dpo_loss,
    sequence_logps,
    smoothing_from_weight,
    step_apo_loss,
    stepwise_bce,
    tpo_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*xs, grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32, requires_grad=grad)


def sgd_step(loss: torch.Tensor, *params: torch.Tensor, lr: float = 0.1) -> None:
    loss.backward()
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad


# ------------------------------------------------------------------------------------------- sequence_logps

# Each row is a different distribution, so a gather that scores every token under row 0, or one that skips
# the shift, gives a different number.
ROW0 = [0.0, 0.0, 0.0]  # uniform: every token has log(1/3)
ROW1 = [math.log(1), math.log(2), math.log(5)]  # probabilities 1/8, 2/8, 5/8
ROW2 = [5.0, -5.0, 0.0]  # predicts nothing (last position)
LOGITS = torch.tensor([[ROW0, ROW1, ROW2]])
IDS = torch.tensor([[2, 1, 2]])


def test_sequence_logps_scores_token_t_under_position_t_minus_1():
    got = sequence_logps(LOGITS, IDS, torch.tensor([[0, 1, 1]]))
    # token 1 (id 1) under row 0: log(1/3); token 2 (id 2) under row 1: log(5/8)
    expected = math.log(1 / 3) + math.log(5 / 8)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # the "first position's distribution" bug: both tokens under row 0 -> 2 * log(1/3)
    assert got.item() != pytest.approx(2 * math.log(1 / 3), abs=1e-3)
    # an unshifted gather: id 1 under row 1 (log 2/8) and id 2 under row 2 (5 - logsumexp(5, -5, 0))
    unshifted = math.log(2 / 8) + 5 - math.log(math.exp(5) + math.exp(-5) + 1)
    assert got.item() != pytest.approx(unshifted, abs=1e-3)


def test_sequence_logps_mask_selects_tokens_and_ignores_position_0():
    all_on = sequence_logps(LOGITS, IDS, torch.tensor([[1, 1, 1]]))
    assert all_on.item() == pytest.approx(math.log(1 / 3) + math.log(5 / 8), abs=1e-6)  # position 0 ignored
    last_only = sequence_logps(LOGITS, IDS, torch.tensor([[0, 0, 1]]))
    assert last_only.item() == pytest.approx(math.log(5 / 8), abs=1e-6)
    none = sequence_logps(LOGITS, IDS, torch.tensor([[1, 0, 0]]))
    assert none.item() == 0.0


def test_sequence_logps_batch_with_padding_and_float32():
    # row b=1 is padded at the end with an out-of-vocabulary pad id under a -inf logit: it must not count
    logits = torch.stack([LOGITS[0], torch.tensor([ROW1, ROW0, [0.0, -math.inf, 0.0]])]).to(torch.bfloat16)
    ids = torch.tensor([[2, 1, 2], [0, 0, 99]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    got = sequence_logps(logits, ids, mask)
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    # b=0 as above (bf16 rounding of log 2, log 5 aside); b=1: id 0 under ROW1 = log(1/8)
    assert got[0].item() == pytest.approx(math.log(1 / 3) + math.log(5 / 8), abs=1e-2)
    assert got[1].item() == pytest.approx(math.log(1 / 8), abs=1e-2)


def test_sequence_logps_gradient_is_finite_under_padding():
    logits = torch.tensor([[ROW0, [0.0, -math.inf, 0.0], ROW2]], requires_grad=True)
    ids = torch.tensor([[0, 1, 1]])  # token 2 (id 1) sits under a -inf logit, but is masked out
    out = sequence_logps(logits, ids, torch.tensor([[0, 1, 0]]))
    out.sum().backward()
    assert out.item() == pytest.approx(math.log(1 / 3), abs=1e-6)
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------------------- DPO


def test_dpo_hand_value_and_metrics():
    # chosen ratio -1 - (-2) = +1, rejected ratio -3 - (-2) = -1, delta = 2, beta * delta = 1
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5)
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0
    assert out.loss.item() == pytest.approx(-math.log(sigmoid(1.0)), abs=1e-6)  # = softplus(-1)
    assert out.metrics["rewards/chosen"] == pytest.approx(0.5)  # 0.5 * 1
    assert out.metrics["rewards/rejected"] == pytest.approx(-0.5)  # 0.5 * -1
    assert out.metrics["rewards/margin"] == pytest.approx(1.0)
    assert out.metrics["rewards/accuracy"] == 1.0
    assert all(isinstance(v, float) for v in out.metrics.values())


def test_dpo_weights():
    # example 0: beta*delta = +1 -> softplus(-1); example 1 (sides swapped): beta*delta = -1 -> softplus(1)
    pc, pr, rc, rr = t(-1.0, -3.0), t(-3.0, -1.0), t(-2.0, -2.0), t(-2.0, -2.0)
    plain = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert plain.loss.item() == pytest.approx((softplus(-1) + softplus(1)) / 2, abs=1e-6)
    assert plain.metrics["rewards/accuracy"] == 0.5
    weighted = dpo_loss(pc, pr, rc, rr, beta=0.5, weights=t(3.0, 1.0))
    assert weighted.loss.item() == pytest.approx((3 * softplus(-1) + 1 * softplus(1)) / 4, abs=1e-6)


def test_dpo_zero_weight_sum_gives_zero_loss_with_graph():
    pc = t(-1.0, -3.0, grad=True)
    out = dpo_loss(pc, t(-3.0, -1.0), t(-2.0, -2.0), t(-2.0, -2.0), weights=t(0.0, 0.0))
    assert out.loss.item() == 0.0
    assert out.loss.requires_grad
    out.loss.backward()
    assert torch.equal(pc.grad, torch.zeros(2))


def test_dpo_label_smoothing_value():
    # z = 1, eps = 0.2: 0.8 * softplus(-1) + 0.2 * softplus(1)
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.2)
    assert out.loss.item() == pytest.approx(0.8 * softplus(-1) + 0.2 * softplus(1), abs=1e-6)
    # a per-example tensor: eps 0 on the first, 0.2 on the second (both z = 1)
    per = dpo_loss(t(-1.0, -1.0), t(-3.0, -3.0), t(-2.0, -2.0), t(-2.0, -2.0), beta=0.5,
                   label_smoothing=t(0.0, 0.2))
    assert per.loss.item() == pytest.approx((softplus(-1) + 0.8 * softplus(-1) + 0.2 * softplus(1)) / 2, abs=1e-6)


def test_dpo_label_smoothing_has_a_finite_target_margin():
    # dl/dz = sigmoid(z) - (1 - eps); with eps = 0.2 it is 0 at z = log(0.8 / 0.2) = log 4 (sigmoid = 0.8)
    beta = 0.5
    pc = torch.tensor([math.log(4) / beta], requires_grad=True)
    out = dpo_loss(pc, t(0.0), t(0.0), t(0.0), beta=beta, label_smoothing=0.2)
    out.loss.backward()
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("eps", [0.5, -0.1])
def test_dpo_rejects_out_of_range_smoothing(eps):
    with pytest.raises(ValueError):
        dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), label_smoothing=eps)


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_dpo_sign_one_step_raises_chosen_over_rejected(eps):
    pc, pr = t(-2.0, grad=True), t(-2.0, grad=True)
    out = dpo_loss(pc, pr, t(-2.0), t(-2.0), beta=0.5, label_smoothing=eps)
    # at z = 0: dl/dpc = beta * (sigmoid(0) - (1 - eps)) = 0.5 * (eps - 0.5) < 0
    sgd_step(out.loss, pc, pr)
    assert pc.grad.item() == pytest.approx(0.5 * (eps - 0.5), abs=1e-6)
    assert pr.grad.item() == pytest.approx(-0.5 * (eps - 0.5), abs=1e-6)
    assert (pc - pr).item() > 0


# ------------------------------------------------------------------------------------ smoothing_from_weight


def test_smoothing_from_weight():
    assert smoothing_from_weight(1.0).item() == 0.0
    assert smoothing_from_weight(0.5).item() == pytest.approx(0.25)  # (1 - 0.5) / 2
    zero = smoothing_from_weight(0.0).item()
    assert 0.49 <= zero < 0.5
    many = smoothing_from_weight(torch.tensor([1.0, 0.5, 0.0, 1.5]))
    assert many.tolist()[:2] == pytest.approx([0.0, 0.25])
    assert many[2].item() < 0.5
    assert many[3].item() == 0.0  # a weight above 1 clamps to no smoothing
    # it plugs straight into dpo_loss, including the weight-0 end
    dpo_loss(t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0),
             label_smoothing=smoothing_from_weight(torch.tensor([1.0, 0.5, 0.0])))


# -------------------------------------------------------------------------------------------------- Step-APO


def test_step_apo_hand_value_and_metrics():
    # beta * delta = 0.5 * 2 = 1, alpha * (q_r - q_c) = 0.4 - 0.9 = -0.5 -> z = 0.5 -> softplus(-0.5)
    out = step_apo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), t(0.9), t(0.4), beta=0.5, alpha=1.0)
    assert out.loss.item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert out.metrics["q/gap"] == pytest.approx(0.5)
    assert out.metrics["rewards/margin"] == pytest.approx(1.0)
    assert out.metrics["rewards/accuracy"] == 1.0
    # alpha = 2: z = 1 - 2 * 0.5 = 0 -> log 2
    out2 = step_apo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), t(0.9), t(0.4), beta=0.5, alpha=2.0)
    assert out2.loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_step_apo_larger_q_gap_larger_loss():
    small = step_apo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), t(0.9), t(0.4), beta=0.5)  # z = 0.5
    large = step_apo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), t(0.9), t(0.1), beta=0.5)  # z = 1 - 0.8 = 0.2
    assert large.loss.item() == pytest.approx(softplus(-0.2), abs=1e-6)
    assert large.loss.item() > small.loss.item()


def test_step_apo_alpha_zero_is_dpo():
    args = (t(-1.0, -3.0), t(-3.0, -0.5), t(-2.0, -2.0), t(-2.5, -2.0))
    apo = step_apo_loss(*args, t(0.9, 0.2), t(0.1, 0.7), beta=0.3, alpha=0.0, weights=t(1.0, 2.0))
    dpo = dpo_loss(*args, beta=0.3, weights=t(1.0, 2.0))
    assert apo.loss.item() == pytest.approx(dpo.loss.item(), abs=1e-7)
    for key, value in dpo.metrics.items():
        assert apo.metrics[key] == pytest.approx(value)


def test_step_apo_weights():
    # z0 = 1 - 0.5 = 0.5; z1: delta = (-3 + 2) - (-1 + 2) = -2, 0.5 * -2 = -1, minus 0.5 -> -1.5
    out = step_apo_loss(t(-1.0, -3.0), t(-3.0, -1.0), t(-2.0, -2.0), t(-2.0, -2.0), t(0.9, 0.9), t(0.4, 0.4),
                        beta=0.5, weights=t(1.0, 3.0))
    assert out.loss.item() == pytest.approx((softplus(-0.5) + 3 * softplus(1.5)) / 4, abs=1e-6)


def test_step_apo_sign_one_step_raises_chosen_over_rejected():
    pc, pr = t(-2.0, grad=True), t(-2.0, grad=True)
    out = step_apo_loss(pc, pr, t(-2.0), t(-2.0), t(0.8), t(0.2), beta=0.5)
    # z = -0.6: dl/dpc = -beta * sigmoid(0.6) < 0
    sgd_step(out.loss, pc, pr)
    assert pc.grad.item() == pytest.approx(-0.5 * sigmoid(0.6), abs=1e-6)
    assert (pc - pr).item() > 0


# ------------------------------------------------------------------------------------------------------- TPO


def test_tpo_uniform_three_pairs_by_score_not_index():
    # beta = 1, ref 0 -> h = [0.5, 0, -1]; scores [3, 1, 2] order the list 0 > 2 > 1. The three pairs:
    #   (0, 2): h0 - h2 = 1.5   (0, 1): h0 - h1 = 0.5   (2, 1): h2 - h1 = -1
    out = tpo_loss(t(0.5, 0.0, -1.0)[None], torch.zeros(1, 3), t(3.0, 1.0, 2.0)[None],
                   torch.ones(1, 3, dtype=torch.bool), beta=1.0)
    expected = (softplus(-1.5) + softplus(-0.5) + softplus(1.0)) / 3
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["pairs"] == 3
    assert out.metrics["rewards/accuracy"] == pytest.approx(2 / 3)
    assert out.metrics["rewards/margin"] == pytest.approx((1.5 + 0.5 - 1.0) / 3)


def test_tpo_beta_scales_h():
    # beta = 0.5 on policy - ref = [1, 0]: h = [0.5, 0], one pair with h0 - h1 = 0.5
    out = tpo_loss(t(0.0, -2.0)[None], t(-1.0, -2.0)[None], t(1.0, 0.0)[None], torch.ones(1, 2, dtype=torch.bool),
                   beta=0.5)
    assert out.loss.item() == pytest.approx(softplus(-0.5), abs=1e-6)


def test_tpo_ties_contribute_nothing():
    # scores [2, 2, 1]: only (0, 2) with 1.5 and (1, 2) with 1.0
    out = tpo_loss(t(0.5, 0.0, -1.0)[None], torch.zeros(1, 3), t(2.0, 2.0, 1.0)[None],
                   torch.ones(1, 3, dtype=torch.bool), beta=1.0)
    assert out.loss.item() == pytest.approx((softplus(-1.5) + softplus(-1.0)) / 2, abs=1e-6)
    assert out.metrics["pairs"] == 2


def test_tpo_masked_entries_contribute_nothing_even_if_nan():
    policy = torch.tensor([[0.5, 0.0, float("nan")]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0, float("nan")]])
    scores = torch.tensor([[2.0, 1.0, 9.0]])  # the masked entry's high score must not make pairs
    out = tpo_loss(policy, ref, scores, torch.tensor([[True, True, False]]), beta=1.0)
    assert out.loss.item() == pytest.approx(softplus(-0.5), abs=1e-6)  # only (0, 1) with 0.5
    assert out.metrics["pairs"] == 1
    out.loss.backward()
    assert torch.isfinite(policy.grad).all()
    assert policy.grad[0, 2].item() == 0.0


def test_tpo_pairs_are_averaged_over_the_whole_batch():
    # list 0: the three pairs of the uniform test above; list 1: scores [1, 0, -] one pair, h1 diff = 2
    policy = torch.tensor([[0.5, 0.0, -1.0], [2.0, 0.0, 0.0]])
    scores = torch.tensor([[3.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out = tpo_loss(policy, torch.zeros(2, 3), scores, mask, beta=1.0)
    expected = (softplus(-1.5) + softplus(-0.5) + softplus(1.0) + softplus(-2.0)) / 4
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["pairs"] == 4


def test_tpo_no_pairs_gives_zero_loss_with_graph():
    policy = t(0.5, 0.0, grad=True)[None]
    out = tpo_loss(policy, torch.zeros(1, 2), t(1.0, 1.0)[None], torch.ones(1, 2, dtype=torch.bool))
    assert out.loss.item() == 0.0
    assert out.loss.requires_grad
    assert out.metrics["pairs"] == 0
    out.loss.backward()


def test_tpo_lambda_weights():
    # scores [1, 0, 2]: gains G = 2**s - 1 = [1, 0, 3]; ranks item2 -> 1, item0 -> 2, item1 -> 3;
    # discounts 1/log2(1 + r) = [1/log2(3), 1/log2(4) = 0.5, 1/log2(2) = 1] for items [0, 1, 2]
    d0, d1, d2 = 1 / math.log2(3), 0.5, 1.0
    lam_20 = abs(3 - 1) * abs(d2 - d0)
    lam_21 = abs(3 - 0) * abs(d2 - d1)  # = 1.5
    lam_01 = abs(1 - 0) * abs(d0 - d1)
    # h = [0, 1, 0]: (2, 0) diff 0 -> log 2; (2, 1) diff -1 -> softplus(1); (0, 1) diff -1 -> softplus(1)
    out = tpo_loss(t(0.0, 1.0, 0.0)[None], torch.zeros(1, 3), t(1.0, 0.0, 2.0)[None],
                   torch.ones(1, 3, dtype=torch.bool), beta=1.0, weighting="lambda")
    expected = (lam_20 * math.log(2) + lam_21 * softplus(1) + lam_01 * softplus(1)) / (lam_20 + lam_21 + lam_01)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["pairs"] == 3


def test_tpo_lambda_ties_rank_earlier_index_first():
    # scores [1, 1, 0]: ranks 1, 2, 3 (tie broken by index); G = [1, 1, 0]; pairs (0, 2) and (1, 2) only
    lam_02 = 1 * abs(1.0 - 0.5)
    lam_12 = 1 * abs(1 / math.log2(3) - 0.5)
    # h = [1, 0, 0]: (0, 2) diff 1 -> softplus(-1); (1, 2) diff 0 -> log 2
    out = tpo_loss(t(1.0, 0.0, 0.0)[None], torch.zeros(1, 3), t(1.0, 1.0, 0.0)[None],
                   torch.ones(1, 3, dtype=torch.bool), beta=1.0, weighting="lambda")
    expected = (lam_02 * softplus(-1) + lam_12 * math.log(2)) / (lam_02 + lam_12)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_tpo_lambda_ranks_only_among_valid_entries():
    # item 1 is masked (score 9 would rank first); valid scores [2, 1, 0] at items 0, 2, 3 -> ranks 1, 2, 3,
    # gains [3, 1, 0], discounts [1, 1/log2(3), 0.5]
    d = [1.0, 1 / math.log2(3), 0.5]
    lam_02 = 2 * abs(d[0] - d[1])
    lam_03 = 3 * abs(d[0] - d[2])  # = 1.5
    lam_23 = 1 * abs(d[1] - d[2])
    # h = [1, nan, 0, 0]: (0, 2) diff 1, (0, 3) diff 1, (2, 3) diff 0
    out = tpo_loss(t(1.0, float("nan"), 0.0, 0.0)[None], torch.zeros(1, 4), t(2.0, 9.0, 1.0, 0.0)[None],
                   torch.tensor([[True, False, True, True]]), beta=1.0, weighting="lambda")
    expected = ((lam_02 + lam_03) * softplus(-1) + lam_23 * math.log(2)) / (lam_02 + lam_03 + lam_23)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_tpo_pair_weights_multiply_in():
    # sorted list scores [3, 2, 1], h = [0.5, 0, -1]: pairs (0,1) 0.5, (0,2) 1.5, (1,2) 1.0
    # pair weights read at [better, worse]: (0,1) -> 2, (0,2) -> 0, (1,2) -> 1; the lower triangle is unused
    pw = torch.tensor([[[9.0, 2.0, 0.0], [7.0, 9.0, 1.0], [7.0, 7.0, 9.0]]])
    out = tpo_loss(t(0.5, 0.0, -1.0)[None], torch.zeros(1, 3), t(3.0, 2.0, 1.0)[None],
                   torch.ones(1, 3, dtype=torch.bool), beta=1.0, pair_weights=pw)
    assert out.loss.item() == pytest.approx((2 * softplus(-0.5) + 1 * softplus(-1.0)) / 3, abs=1e-6)
    # with lambda weighting the two multiply: ranks 1,2,3, G = [7, 3, 1], discounts [1, 1/log2 3, 0.5]
    d = [1.0, 1 / math.log2(3), 0.5]
    lam_01, lam_12 = 4 * abs(d[0] - d[1]) * 2, 2 * abs(d[1] - d[2]) * 1
    both = tpo_loss(t(0.5, 0.0, -1.0)[None], torch.zeros(1, 3), t(3.0, 2.0, 1.0)[None],
                    torch.ones(1, 3, dtype=torch.bool), beta=1.0, weighting="lambda", pair_weights=pw)
    expected = (lam_01 * softplus(-0.5) + lam_12 * softplus(-1.0)) / (lam_01 + lam_12)
    assert both.loss.item() == pytest.approx(expected, abs=1e-6)


def test_tpo_unknown_weighting():
    with pytest.raises(ValueError):
        tpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), t(1.0, 0.0)[None], torch.ones(1, 2, dtype=torch.bool),
                 weighting="ndcg")


@pytest.mark.parametrize("weighting", ["uniform", "lambda"])
def test_tpo_sign_one_step_orders_by_score(weighting):
    policy = torch.zeros(1, 3, requires_grad=True)
    scores = t(3.0, 2.0, 1.0)[None]
    out = tpo_loss(policy, torch.zeros(1, 3), scores, torch.ones(1, 3, dtype=torch.bool), beta=1.0,
                   weighting=weighting)
    sgd_step(out.loss, policy)
    h = policy.detach()[0]
    assert h[0] > h[1] > h[2]
    assert h[0] > h[2]


# ------------------------------------------------------------------------------------------------- verifiers


def test_bradley_terry_hand_values_and_weights():
    # margins [2 - 1, 0 - 0.5] = [1, -0.5]: losses softplus(-1), softplus(0.5)
    out = bradley_terry_loss(t(2.0, 0.0), t(1.0, 0.5))
    assert out.loss.item() == pytest.approx((softplus(-1) + softplus(0.5)) / 2, abs=1e-6)
    assert out.metrics["accuracy"] == 0.5
    assert out.metrics["margin"] == pytest.approx(0.25)  # (1 - 0.5) / 2
    weighted = bradley_terry_loss(t(2.0, 0.0), t(1.0, 0.5), weights=t(1.0, 3.0))
    assert weighted.loss.item() == pytest.approx((softplus(-1) + 3 * softplus(0.5)) / 4, abs=1e-6)
    zero = bradley_terry_loss(t(2.0, 0.0, grad=True), t(1.0, 0.5), weights=t(0.0, 0.0))
    assert zero.loss.item() == 0.0 and zero.loss.requires_grad


def test_bradley_terry_sign_one_step():
    sc, sr = t(0.0, grad=True), t(0.0, grad=True)
    out = bradley_terry_loss(sc, sr)
    sgd_step(out.loss, sc, sr)
    assert sc.grad.item() == pytest.approx(-0.5)  # -sigmoid(-0)
    assert (sc - sr).item() > 0


def test_stepwise_bce_hand_values_with_soft_labels():
    # BCE(x, y) = y * softplus(-x) + (1 - y) * softplus(x)
    #   x = 0, y = 1: log 2;  x = 2, y = 0.25: 0.25 * softplus(-2) + 0.75 * softplus(2);  x = -1, y = 0: softplus(-1)
    l0, l1, l2 = math.log(2), 0.25 * softplus(-2) + 0.75 * softplus(2), softplus(-1)
    out = stepwise_bce(t(0.0, 2.0, -1.0), t(1.0, 0.25, 0.0))
    assert out.loss.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)
    # predictions (p > 0.5): F, T, F; labels (> 0.5): T, F, F -> only the last agrees
    assert out.metrics["accuracy"] == pytest.approx(1 / 3)
    assert out.metrics["mean_prob"] == pytest.approx((0.5 + sigmoid(2) + sigmoid(-1)) / 3)
    weighted = stepwise_bce(t(0.0, 2.0, -1.0), t(1.0, 0.25, 0.0), weights=t(2.0, 1.0, 1.0))
    assert weighted.loss.item() == pytest.approx((2 * l0 + l1 + l2) / 4, abs=1e-6)


def test_stepwise_bce_pos_weight_scales_the_positive_term_and_moves_the_optimum():
    # l = w * y * softplus(-x) + (1 - y) * softplus(x), w = 3
    l0, l1, l2 = 3 * math.log(2), 3 * 0.25 * softplus(-2) + 0.75 * softplus(2), softplus(-1)
    out = stepwise_bce(t(0.0, 2.0, -1.0), t(1.0, 0.25, 0.0), pos_weight=3.0)
    assert out.loss.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)
    # dl/dx = (w y + 1 - y) sigmoid(x) - w y: zero at sigmoid(x) = w y / (w y + 1 - y); y = 0.25, w = 3 -> x = 0
    x = torch.tensor([0.0], requires_grad=True)
    stepwise_bce(x, [0.25], pos_weight=3.0).loss.backward()
    assert x.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_stepwise_bce_soft_label_is_its_own_target():
    # dBCE/dx = sigmoid(x) - y: zero at x = log(y / (1 - y)); y = 0.25 -> x = log(1/3)
    x = torch.tensor([math.log(1 / 3)], requires_grad=True)
    stepwise_bce(x, [0.25]).loss.backward()
    assert x.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_stepwise_bce_sign_one_step():
    logits = t(0.0, 0.0, grad=True)
    out = stepwise_bce(logits, t(1.0, 0.0))
    sgd_step(out.loss, logits)
    # grads (sigmoid(0) - y) / 2 = [-0.25, 0.25]
    assert logits.grad.tolist() == pytest.approx([-0.25, 0.25])
    assert logits[0].item() > 0 > logits[1].item()


def test_advantage_mse_hand_values():
    # tanh(0) = 0, tanh(ln 3 / 2) = (3 - 1) / (3 + 1) = 0.5, tanh(-ln 3) = -(9 - 1) / (9 + 1) = -0.8
    logits = t(0.0, math.log(3) / 2, -math.log(3))
    out = advantage_mse(logits, t(0.25, 0.5, -1.0))
    # squared errors 0.25², 0, 0.2² -> mean (0.0625 + 0 + 0.04) / 3
    assert out.loss.item() == pytest.approx(0.1025 / 3, abs=1e-6)
    assert out.metrics["mae"] == pytest.approx((0.25 + 0 + 0.2) / 3, abs=1e-6)
    assert out.metrics["mean_pred"] == pytest.approx((0 + 0.5 - 0.8) / 3, abs=1e-6)
    # signs (>= 0): predictions +, +, -; targets +, +, - -> all agree; a prediction of 0 counts as no loss of ground
    assert out.metrics["sign_accuracy"] == 1.0
    weighted = advantage_mse(logits, [0.25, 0.5, -1.0], weights=t(1.0, 1.0, 2.0))
    assert weighted.loss.item() == pytest.approx((0.0625 + 2 * 0.04) / 4, abs=1e-6)


def test_advantage_mse_gradient_and_one_step():
    # d/dx (tanh x - A)² = 2 (tanh x - A)(1 - tanh² x); at x = 0: -2A, over the mean of 2 steps: -A
    logits = t(0.0, 0.0, grad=True)
    out = advantage_mse(logits, t(0.5, -0.75))
    sgd_step(out.loss, logits)
    assert logits.grad.tolist() == pytest.approx([-0.5, 0.75])
    assert logits[0].item() > 0 > logits[1].item()  # each prediction moved toward its advantage
