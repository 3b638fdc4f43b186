"""Turning sequence scores into the per-token rewards PPO optimises, and score post-processing.

Reward whitening (lm-h-p whitens rewards with shift_mean=False) goes through
`rlhfkit.algos.masking.masked_whiten`.
"""

from __future__ import annotations

from typing import Literal

import torch

from rlhfkit.algos.kl import KLEstimator, kl_penalty
from rlhfkit.algos.masking import last_true_mask

EosPenaltyMode = Literal["subtract", "replace"]


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards with the KL penalty in the reward, and the per-token KL.

    kl_t = estimator(logπ_t, logπ_ref,t);   reward_t = −β·kl_t + [t = last real token]·score.

    Shapes: `scores` (B,); `logprobs`, `ref_logprobs`, `response_mask` (B, T) with
    `response_mask` True = real response token (EOS included). Returns `(rewards, kl)`, both (B, T)
    and 0 where the mask is False. The score lands on the last True of each row; a row without any
    True gets nothing. `kl.sum(-1)` is the sequence KL that `objective/kl` logs (rlhf-details c5).

    Source: lm-human-preferences `train_policy.py: compute_rewards`; N-implementation-details
    blog, detail 8.
    """
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Sanitise before the estimator so garbage log-probs at padding (e.g. INVALID_LOGPROB) cannot
    # turn into inf/NaN through exp in k3.
    kl = kl_penalty(torch.where(mask, logprobs, zero), torch.where(mask, ref_logprobs, zero), estimator)
    kl = torch.where(mask, kl, zero)
    score_at_last = torch.where(last_true_mask(mask), scores.to(kl.dtype).unsqueeze(-1), zero)
    return -kl_coef * kl + score_at_last, kl


def apply_missing_eos_penalty(
    scores: torch.Tensor, has_eos: torch.Tensor, penalty: float, mode: EosPenaltyMode = "subtract"
) -> torch.Tensor:
    """Penalise responses that never emitted EOS (truncated by the length limit).

    - "subtract" (TRL `missing_eos_penalty`, recommended 1.0): score − penalty;
    - "replace" (lm-h-p / N+ `penalty_reward_value = −1`): the score becomes −penalty.

    `penalty` is a magnitude (≥ 0) in both modes. Shapes: `scores` (B,), `has_eos` (B,) bool
    → (B,). Source: rlhf-details c4.
    """
    if penalty < 0:
        raise ValueError(f"penalty is a magnitude and must be >= 0, got {penalty}")
    if mode == "subtract":
        penalised = scores - penalty
    elif mode == "replace":
        penalised = torch.full_like(scores, -penalty)
    else:
        raise ValueError(f"unknown missing-EOS mode {mode!r}; valid: subtract, replace")
    return torch.where(has_eos.bool(), scores, penalised)


def clip_rewards(scores: torch.Tensor, limit: float) -> torch.Tensor:
    """clip(score, −limit, limit), elementwise. Source: MOSS-RLHF PPO-max reward clipping (c19)."""
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    return scores.clamp(-limit, limit)


def reward_normalization(
    scores: torch.Tensor, target_mean: float = 0.0, target_std: float = 1.0
) -> tuple[float, float]:
    """Gain and bias that map `scores` to the target mean and std: g·s + b.

    g = σ_T / σ_D,  b = μ_T − g·μ_D, with μ_D, σ_D the mean and *biased* std of `scores` (B,)
    (TensorFlow `moments`, as lm-h-p). Measure on ~256 responses of the reference policy, before
    and after RM training, so the KL coefficient keeps one meaning (rlhf-details b7, §4 item 5).
    Source: lm-human-preferences `train_reward.py`.
    """
    if scores.numel() < 2:
        raise ValueError("need at least 2 scores to estimate a spread")
    x = scores.detach().double()
    std = x.std(unbiased=False).item()
    if std == 0.0:
        raise ValueError("scores have zero spread; the gain is undefined")
    gain = target_std / std
    return gain, target_mean - gain * x.mean().item()
