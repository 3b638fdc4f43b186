"""PPO losses: the clipped policy surrogate, the clipped value loss, entropy and KL terms.

Mask polarity: `response_mask` (B, T) True = real response token. Inputs at masked positions are
replaced before any exp/square, so garbage there (padding, N+'s INVALID_LOGPROB = 1.0) changes
neither the loss nor the gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.algos.kl import KLEstimator, kl_k3, kl_penalty
from rlhfkit.algos.masking import AggMode, aggregate_token_loss, masked_mean, masked_var

Tensor = torch.Tensor


@dataclass(frozen=True)
class PolicyStats:
    """Diagnostics of one policy-loss evaluation, 0-dim detached tensors (no host sync), each a
    mean over response tokens unless said otherwise. Healthy lm-h-p runs: clipfrac < 0.005,
    approx_kl < 1e-3 (rlhf-details d8)."""

    clipfrac: Tensor
    """Fraction of tokens whose clipped term is the active one (`ppo/clipfrac`)."""
    approx_kl: Tensor
    """½·E[(logπ − logπ_old)²] — the k2 estimate of KL(π_old ‖ π), as lm-h-p/N+ log `approxkl`."""
    approx_kl_k3: Tensor
    """E[(ρ − 1) − log ρ] with ρ = π/π_old — the unbiased, non-negative k3 estimate of the same KL."""
    ratio_mean: Tensor
    """Mean of ρ = π/π_old; exactly 1 on the first minibatch (c17)."""
    ratio_min: Tensor
    """Smallest ρ over response tokens."""
    ratio_max: Tensor
    """Largest ρ over response tokens (TRL skips batches beyond 10, c20)."""


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_eps: float,
    agg_mode: AggMode = "token_mean",
    max_len: int | None = None,
) -> tuple[Tensor, PolicyStats]:
    """PPO's clipped surrogate, as a loss to minimise.

    ρ_t = exp(logπ_t − logπ_old,t);   ℓ_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε));
    loss = aggregate(ℓ, mask, agg_mode, max_len)  (see `masking.aggregate_token_loss`).

    Shapes: all (B, T); `advantages` are constants (detach them). At ρ = 1 the gradient is the
    REINFORCE gradient −A ∇logπ. Source: Schulman et al. 2017 eq. 7; lm-human-preferences
    `train_policy.py`.
    """
    mask = response_mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)
    adv = torch.where(mask, advantages.to(log_ratio.dtype), 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = aggregate_token_loss(torch.maximum(unclipped, clipped), mask, agg_mode, max_len)

    with torch.no_grad():
        big = torch.finfo(ratio.dtype).max
        any_token = mask.any()
        one = ratio.new_ones(())
        stats = PolicyStats(
            clipfrac=masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            approx_kl=masked_mean(0.5 * log_ratio**2, mask),
            # Samples come from π_old, so ρ = π/π_old plays the role of Schulman's r;
            # kl_k3(0, log ρ) evaluates (ρ − 1) − log ρ.
            approx_kl_k3=masked_mean(kl_k3(torch.zeros_like(log_ratio), log_ratio), mask),
            ratio_mean=masked_mean(ratio, mask),
            ratio_min=torch.where(any_token, torch.where(mask, ratio, big).amin(), one),
            ratio_max=torch.where(any_token, torch.where(mask, ratio, -big).amax(), one),
        )
    return loss, stats


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor, value_clip_eps: float | None
) -> tuple[Tensor, Tensor]:
    """Value loss with optional clipping of the new value around the rollout-time value.

    V_clip = V_old + clip(V − V_old, −ε, ε);
    loss = ½ · mean_mask max((V − R)², (V_clip − R)²)     (`value_clip_eps=None`: ½·mean (V − R)²).

    Shapes: all (B, T) → `(loss, clipfrac)`, clipfrac the fraction of tokens where the clipped
    error is the larger one (0 without clipping). Source: lm-human-preferences `train_policy.py`
    (ε = 0.2, c9); Engstrom et al. 2020 and Andrychowicz et al. 2021 found clipping useless or
    harmful on control tasks, hence `None`.
    """
    mask = response_mask.bool()
    values_m = torch.where(mask, values, 0.0)
    returns_m = torch.where(mask, returns.to(values_m.dtype), 0.0)
    unclipped = (values_m - returns_m) ** 2
    if value_clip_eps is None:
        return 0.5 * masked_mean(unclipped, mask), values_m.new_zeros(())
    old_m = torch.where(mask, old_values.to(values_m.dtype), 0.0)
    v_clipped = old_m + torch.clamp(values_m - old_m, -value_clip_eps, value_clip_eps)
    clipped = (v_clipped - returns_m) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(values_m.dtype), mask).detach()
    return loss, clipfrac


def entropy_bonus(
    entropy: Tensor, response_mask: Tensor, agg_mode: AggMode = "token_mean", max_len: int | None = None
) -> Tensor:
    """Mean per-token entropy (B, T) → scalar; the loop *subtracts* coef × this from the loss.
    Off by default in lm-h-p, N+ and InstructGPT (c15)."""
    return aggregate_token_loss(entropy, response_mask, agg_mode, max_len)


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    response_mask: Tensor,
    estimator: KLEstimator = "k3",
    agg_mode: AggMode = "token_mean",
    max_len: int | None = None,
) -> Tensor:
    """KL-to-reference as a loss term (GRPO: β·k3 per token with β = 0.04, aggregated like the
    policy loss — pass the same `agg_mode`). The loop multiplies by β.

    loss = aggregate(estimator(logπ, logπ_ref), mask).  Note the gradient differs by estimator:
    "k2" matches k1-in-the-reward on-policy, "k3" follows the forward KL (see `kl` module).
    Source: DeepSeekMath §4.1 eq. 4.
    """
    mask = response_mask.bool()
    kl = kl_penalty(torch.where(mask, logprobs, 0.0), torch.where(mask, ref_logprobs, 0.0), estimator)
    return aggregate_token_loss(kl, mask, agg_mode, max_len)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var[R − V] / Var[R] over masked-in tokens (biased variances), 0-dim, detached.

    1 = perfect critic, 0 = no better than a constant, < 0 = worse; NaN when Var[R] = 0.
    lm-h-p logs it as `ppo/val/var_explained` (≈0.8 in healthy runs, d8).
    """
    with torch.no_grad():
        var_returns = masked_var(returns, mask)
        ev = 1.0 - masked_var(returns - values, mask) / var_returns
        return torch.where(var_returns > 0, ev, torch.full_like(ev, float("nan")))
