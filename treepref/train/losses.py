"""Preference and verifier losses as plain torch functions.

Every loss takes tensors that are already reduced to one number per response (a summed log-probability, a
verifier score, a step logit) and returns a ``LossOutput``: the scalar to call ``backward()`` on and a dict of
detached floats to log. Nothing here knows about models, tokenizers or batching; ``sequence_logps`` is the one
bridge from a causal LM's logits to the summed log-probabilities the preference losses consume.

Conventions shared by all losses:

* ``weights`` is an optional ``[B]`` tensor of per-example weights; the loss is ``sum(w * l) / sum(w)``
  (``None`` means a plain mean). A weight sum of zero gives a loss of exactly 0 that still carries the graph,
  so a trainer can call ``backward()`` on it unconditionally.
* Metrics are unweighted means over the batch (what the examples look like, not what the loss counted).
* ``-logsigmoid(z)`` is used instead of ``-log(sigmoid(z))``; it is the same number, computed stably.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what backward() is called on
    metrics: dict[str, float]  # detached python floats for logging


# --------------------------------------------------------------------------------------------------- helpers


def _like(x, ref: torch.Tensor) -> torch.Tensor:
    """``x`` (a number, a list or a tensor) as a floating tensor on ``ref``'s device and dtype."""
    return torch.as_tensor(x, dtype=ref.dtype, device=ref.device)


def _weighted_mean(per_example: torch.Tensor, weights) -> torch.Tensor:
    """``sum(w * l) / sum(w)``; 0 (graph kept) when the weights sum to 0 or the batch is empty."""
    w = torch.ones_like(per_example) if weights is None else _like(weights, per_example)
    total = (per_example * w).sum()
    denom = w.sum()
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    return torch.where(denom != 0, total / safe, total * 0)


def _mean(x: torch.Tensor) -> float:
    return x.detach().float().mean().item() if x.numel() else 0.0


def _reward_metrics(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, beta: float) -> dict[str, float]:
    """The implicit-reward metrics of DPO-style losses: ``beta * log(pi / pi_ref)`` per side and their gap."""
    delta = chosen_ratio - rejected_ratio
    return {
        "rewards/chosen": _mean(beta * chosen_ratio),
        "rewards/rejected": _mean(beta * rejected_ratio),
        "rewards/margin": _mean(beta * delta),
        "rewards/accuracy": _mean((delta > 0).float()),
    }


# ------------------------------------------------------------------------------------------- log-probabilities


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the masked tokens of each sequence: ``[B,T,V], [B,T], [B,T] -> [B]``.

    A causal LM's logits at position ``t-1`` are its distribution for token ``t``, so token ``t`` is scored as
    ``log_softmax(logits[:, t-1])[input_ids[:, t]]`` and kept where ``completion_mask[:, t]`` is set. Position 0
    has no predictor, so its mask value is ignored. The softmax runs in float32: summing hundreds of bf16
    log-probabilities loses the small differences between a chosen and a rejected completion that the
    preference losses live on.

    Masked positions are selected with ``where`` rather than multiplied by 0, and their ids are replaced by 0
    before the gather, so a pad id outside the vocabulary or a ``-inf`` logit under padding cannot make the
    sum NaN.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    keep = completion_mask[:, 1:].bool()
    targets = torch.where(keep, input_ids[:, 1:], torch.zeros_like(input_ids[:, 1:]))
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, token_logp, torch.zeros_like(token_logp)).sum(-1)


# ------------------------------------------------------------------------------------------------------- DPO


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, weights=None, label_smoothing=0.0) -> LossOutput:
    """Direct preference optimisation with optional conservative label smoothing; all inputs ``[B]``.

    DPO reads ``r = beta * log(pi / pi_ref)`` as the reward that the KL-regularised optimum implies, and fits
    it to the preferences with a Bradley-Terry likelihood. With
    ``delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)`` the reward gap is
    ``beta * delta`` and the negative log-likelihood of "chosen beats rejected" is ``-logsigmoid(beta * delta)``.

    Conservative DPO assumes each label is flipped with probability ``eps`` and takes the cross-entropy
    against that soft label::

        l = -(1 - eps) * logsigmoid(beta * delta) - eps * logsigmoid(-beta * delta)

    Its derivative in ``z = beta * delta`` is ``sigmoid(z) - (1 - eps)``, which vanishes at
    ``z = log((1 - eps) / eps)``: the margin is pulled to a finite target instead of being pushed without end,
    which is what a noisy or low-confidence pair deserves. ``label_smoothing`` is a float or a ``[B]`` tensor
    (see ``smoothing_from_weight``), each value in ``[0, 0.5)``; 0 is plain DPO.
    """
    chosen_ratio = policy_chosen - _like(ref_chosen, policy_chosen)
    rejected_ratio = policy_rejected - _like(ref_rejected, policy_rejected)
    z = beta * (chosen_ratio - rejected_ratio)
    eps = _like(label_smoothing, z)
    if eps.numel() and not bool(((eps >= 0) & (eps < 0.5)).all()):
        raise ValueError("label_smoothing must lie in [0, 0.5)")
    per_example = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return LossOutput(_weighted_mean(per_example, weights), _reward_metrics(chosen_ratio, rejected_ratio, beta))


def smoothing_from_weight(weight) -> torch.Tensor:
    """A pair's confidence weight as conservative-DPO label smoothing: ``eps = (1 - weight) / 2``.

    MCTS-DPO trusts a step preference as far as the search visited it; the export's ``weight`` column holds
    that confidence as ``n / (n + k)`` in ``[0, 1]``. Reading ``weight`` as the probability that the label is
    right *beyond chance* (1: certain, 0: a coin flip) gives a flip probability ``(1 - weight) / 2``. The value
    is clamped to ``[0, 0.499]`` because ``eps = 0.5`` makes the loss constant in the margin (no signal) and
    ``dpo_loss`` rejects it.
    """
    w = torch.as_tensor(weight)
    if not w.is_floating_point():
        w = w.float()
    return ((1 - w) / 2).clamp(0.0, 0.499)


def step_apo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                  ref_rejected: torch.Tensor, q_chosen, q_rejected, *, beta: float = 0.1, alpha: float = 1.0,
                  weights=None) -> LossOutput:
    """Step-level advantage preference optimisation (CPL-style); all inputs ``[B]``.

    A step pair from a search tree comes with value estimates ``Q`` of both steps. Plain DPO only asks the
    chosen step to win; here the implicit reward gap must beat the value gap::

        l = -logsigmoid(beta * delta + alpha * (q_rejected - q_chosen))

    The offset lowers the logit by ``alpha * (q_chosen - q_rejected)``, so for the same confidence a pair whose
    steps are far apart in value needs a proportionally larger log-ratio margin ``beta * delta``, while a pair
    of nearly equal steps is satisfied by a small one. This is DPO with a per-pair offset; ``alpha = 0`` is
    plain DPO. The Q values are targets, not predictions, and are detached.

    Metrics are those of ``dpo_loss`` plus ``"q/gap"``, the mean of ``q_chosen - q_rejected``.
    """
    chosen_ratio = policy_chosen - _like(ref_chosen, policy_chosen)
    rejected_ratio = policy_rejected - _like(ref_rejected, policy_rejected)
    q_gap = (_like(q_chosen, chosen_ratio) - _like(q_rejected, chosen_ratio)).detach()
    z = beta * (chosen_ratio - rejected_ratio) - alpha * q_gap
    per_example = -F.logsigmoid(z)
    metrics = _reward_metrics(chosen_ratio, rejected_ratio, beta)
    metrics["q/gap"] = _mean(q_gap)
    return LossOutput(_weighted_mean(per_example, weights), metrics)


# ------------------------------------------------------------------------------------------------------- TPO


def _ranks(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1-based rank of each valid response by descending score within its list; ties go to the earlier index.

    ``rank_i = 1 + #{valid j: s_j > s_i} + #{valid j < i: s_j == s_i}``, so invalid entries never push a
    valid one down. Invalid entries get a rank too, but it is never used.
    """
    k = scores.shape[-1]
    si, sj = scores.unsqueeze(-1), scores.unsqueeze(-2)  # [B,K,1] (the ranked item i), [B,1,K] (the other j)
    earlier = torch.ones(k, k, dtype=torch.bool, device=scores.device).tril(-1)  # [i, j] is j < i
    ahead = ((sj > si) | ((sj == si) & earlier)) & mask.unsqueeze(-2)
    return 1 + ahead.sum(-1)


def tpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, *,
             beta: float = 0.1, weighting: str = "uniform", pair_weights: torch.Tensor | None = None) -> LossOutput:
    """TPO's listwise preference over a ranked list of ``K`` responses per prompt; inputs ``[B,K]``.

    Each response gets the DPO implicit reward ``h = beta * (policy_logps - ref_logps)``. The list's ranking is
    learnt as every pair it implies (the RankNet / LiPO reading of a preference list): for each valid ``i, j``
    with ``scores[b, i] > scores[b, j]``::

        l_bij = -logsigmoid(h_bi - h_bj) * lam_bij

    the Bradley-Terry loss of "i beats j", weighted. Ties and entries outside ``mask`` make no pair. The loss
    is ``sum(l) / sum(lam)`` over all counted pairs of the batch (0, graph kept, when there are none).

    ``weighting``:

    * ``"uniform"``: ``lam = 1``, every implied pair counts the same.
    * ``"lambda"`` (LiPO-lambda): ``lam = |G_i - G_j| * |1/log2(1 + r_i) - 1/log2(1 + r_j)|`` with gain
      ``G = 2**score - 1`` and ``r`` the 1-based rank by score within the valid part of the list (ties: the
      earlier index ranks first). This is how much swapping the two would change the list's DCG, so pairs
      near the top and pairs far apart in score matter most.

    ``pair_weights`` is an optional ``[B,K,K]`` tensor multiplied into ``lam``, read at ``[b, i, j]`` with ``i``
    the higher-scored response. It is the pluggable step weighting: e.g. TPO's adaptive step reward, which
    down-weights pairs whose steps are nearly identical so that shared prefixes do not dominate.

    Two differences from the public TPO code, both deliberate: that code minimises
    ``-logsigmoid(beta * rank_loss)`` of a ranking loss, and since ``-logsigmoid`` is decreasing, descending it
    *raises* the ranking loss (a sign error); and its log-probability gather scores every token under the first
    position's distribution. Here the pairwise loss is applied to the rewards directly, and
    ``sequence_logps`` scores token ``t`` under position ``t-1``.

    Metrics: ``"pairs"`` (counted pairs), ``"rewards/accuracy"`` (share of them with ``h_i > h_j``) and
    ``"rewards/margin"`` (mean ``h_i - h_j`` over them); both are 0.0 when there is no pair.
    """
    mask = mask.bool()
    # Entries outside the mask may hold anything (NaN padding included): zero them before they meet any op,
    # so neither the loss nor its gradient can pick them up.
    h = torch.where(mask, beta * (policy_logps - _like(ref_logps, policy_logps)), torch.zeros_like(policy_logps))
    scores = _like(scores, h)
    safe_scores = torch.where(mask, scores, torch.zeros_like(scores))
    diff = h.unsqueeze(-1) - h.unsqueeze(-2)  # [b, i, j] = h_i - h_j
    counted = (safe_scores.unsqueeze(-1) > safe_scores.unsqueeze(-2)) & mask.unsqueeze(-1) & mask.unsqueeze(-2)

    if weighting == "uniform":
        lam = torch.ones_like(diff)
    elif weighting == "lambda":
        gain = 2.0 ** safe_scores - 1
        discount = 1.0 / torch.log2(1.0 + _ranks(safe_scores, mask).to(h.dtype))
        lam = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (discount.unsqueeze(-1) - discount.unsqueeze(-2)).abs()
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected 'uniform' or 'lambda'")
    if pair_weights is not None:
        lam = lam * _like(pair_weights, h)
    lam = torch.where(counted, lam, torch.zeros_like(lam)).detach()

    per_pair = torch.where(counted, -F.logsigmoid(diff) * lam, torch.zeros_like(diff))
    total, denom = per_pair.sum(), lam.sum()
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    loss = torch.where(denom != 0, total / safe, total * 0)

    n = int(counted.sum().item())
    d = diff.detach()[counted]
    metrics = {
        "pairs": float(n),
        "rewards/accuracy": _mean((d > 0).float()),
        "rewards/margin": _mean(d),
    }
    return LossOutput(loss, metrics)


# ------------------------------------------------------------------------------------------------- verifiers


def bradley_terry_loss(score_chosen: torch.Tensor, score_rejected: torch.Tensor, *, weights=None) -> LossOutput:
    """Pairwise verifier loss (Tree-PLV): ``l = -logsigmoid(s_c - s_r)``; inputs ``[B]``.

    Bradley-Terry models ``P(chosen beats rejected) = sigmoid(s_c - s_r)``; this is its negative
    log-likelihood. Only score differences are learnt, which is what a verifier that ranks sibling steps needs:
    it never has to commit to an absolute probability of correctness.

    Metrics: ``"accuracy"`` (share with ``s_c > s_r``) and ``"margin"`` (mean ``s_c - s_r``).
    """
    margin = score_chosen - _like(score_rejected, score_chosen)
    per_example = -F.logsigmoid(margin)
    metrics = {"accuracy": _mean((margin > 0).float()), "margin": _mean(margin)}
    return LossOutput(_weighted_mean(per_example, weights), metrics)


def stepwise_bce(logits: torch.Tensor, labels, *, weights=None, pos_weight: float | None = None) -> LossOutput:
    """Stepwise process-reward loss: binary cross-entropy of one logit per labelled step; inputs ``[N]``.

    ``logits`` is one scalar per step, e.g. a 2-class head's ``logit[1] - logit[0]``, for which
    ``sigmoid`` equals the head's softmax probability of class 1 ("step is good"). ``labels`` are floats in
    ``[0, 1]``: hard 0/1 labels or soft Monte Carlo shares (the fraction of rollouts from the step that reached
    the right answer). With a soft label ``y`` the loss is minimised at ``sigmoid(logit) = y`` (its derivative
    is ``sigmoid(logit) - y``), so the head learns the estimated success probability rather than a hard call.

    ``pos_weight`` multiplies the positive term, ``l = -(w * y * log σ + (1 - y) * log(1 - σ))``: with labels
    mostly 0 (a weak policy's steps), ``w = negatives / positives`` makes both classes weigh the same in the loss,
    where unweighted the head gains most by calling every step wrong (the optimum moves to
    ``σ = w y / (w y + 1 - y)``).

    Metrics: ``"accuracy"`` (``sigmoid > 0.5`` agrees with ``label > 0.5``) and ``"mean_prob"``.
    """
    labels = _like(labels, logits)
    pw = None if pos_weight is None else _like(pos_weight, logits)
    per_step = F.binary_cross_entropy_with_logits(logits, labels, reduction="none", pos_weight=pw)
    prob = torch.sigmoid(logits.detach())
    metrics = {"accuracy": _mean(((prob > 0.5) == (labels > 0.5)).float()), "mean_prob": _mean(prob)}
    return LossOutput(_weighted_mean(per_step, weights), metrics)


def advantage_mse(logits: torch.Tensor, targets, *, weights=None) -> LossOutput:
    """Process-advantage regression (a PAV): squared error of ``tanh(logit)`` against each step's advantage;
    inputs ``[N]``, one per step.

    An advantage ``A = V(after) - V(before)`` is a difference of two success probabilities, so it lies in
    ``[-1, 1]``; ``tanh`` maps the head's unbounded logit onto that range, so no prediction can leave it and a
    target of ±1 is approached rather than overshot::

        l = (tanh(logit) - A) ** 2

    The head's output is the advantage itself, signed, in the units the export records and a search sums along
    a path. (BCE on the soft label ``(1 + A) / 2`` has the same optimum, since ``sigmoid(x) = (1 + tanh(x / 2)) /
    2``: that is ``method: prm`` with ``labels: soft`` on an advantage export; this is the regression.)

    Metrics: ``"mae"`` (mean ``|tanh(logit) - A|``), ``"sign_accuracy"`` (``tanh >= 0`` agrees with ``A >= 0``:
    the export's hard label) and ``"mean_pred"``.
    """
    targets = _like(targets, logits)
    pred = torch.tanh(logits)
    per_step = (pred - targets) ** 2
    p = pred.detach()
    metrics = {"mae": _mean((p - targets).abs()), "sign_accuracy": _mean(((p >= 0) == (targets >= 0)).float()),
               "mean_pred": _mean(p)}
    return LossOutput(_weighted_mean(per_step, weights), metrics)
