"""Advantage estimators: GAE with a critic, and the critic-free group/batch baselines.

All estimators sit behind one registry, `ADVANTAGE_ESTIMATORS`, with one calling convention:

    advantages, returns = spec.fn(scores=..., rewards=..., values=..., response_mask=...,
                                  group_ids=..., gamma=..., gae_lambda=...)

- `scores` (B,): the sequence score (RM score after EOS penalty / clipping).
- `rewards` (B, T) or None: per-token rewards from `per_token_rewards` (−β·kl at every token, the
  score added on the last real token). GAE needs them. The critic-free estimators use them when
  given, which is how a KL penalty *in the reward* reaches them: GRPO and RLOO use the sequence
  reward Σ_t rewards_t = score − β Σ_t kl_t (RLOO as in Ahmadian et al. 2024 / TRL);
  REINFORCE++ uses the per-token reward-to-go (eq. 8 of Hu 2025). With `rewards=None` they use
  `scores` alone (GRPO with the KL in the loss instead, `ppo_losses.kl_loss`).
- `values` (B, T): critic values, GAE only. `group_ids` (B,) int: responses to the same prompt
  share an id (needed by grpo, dr_grpo, rloo, reinforce_pp_baseline).
- `reduce_sum` (optional): sums a tensor over data-parallel processes; estimators that normalise
  over the batch (REINFORCE++) then use the global batch. Group estimators need none: all G
  responses to a prompt are sampled on the same process.
- Returns `(advantages (B, T), returns (B, T) | None)`; returns are the value targets and exist
  only for GAE. Everything is 0 where `response_mask` (True = real response token) is False.

Advantages are constants for the policy loss: GAE runs under `torch.no_grad()`, and callers
should pass detached scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhfkit.algos.masking import AggMode, last_true_mask, masked_sum, masked_whiten

Tensor = torch.Tensor


def _broadcast_to_tokens(per_seq: Tensor, response_mask: Tensor) -> Tensor:
    return torch.where(response_mask.bool(), per_seq.unsqueeze(-1), 0.0)


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float, gae_lambda: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the response tokens.

    δ_t = r_t + γ V_{t'} − V_t,   A_t = δ_t + γλ A_{t'},   returns_t = A_t + V_t,

    where t' is the next position whose mask is True; after the last real token V = A = 0 (zero
    bootstrap: the episode ends at EOS or at the length limit). Masked positions are skipped, not
    treated as zero-reward steps, so a hole in the mask (e.g. tool output) joins its neighbours.

    Shapes: `rewards`, `values`, `response_mask` (B, T) → `(advantages, returns)` (B, T), 0 where
    the mask is False. Values at masked positions are never read.
    Source: Schulman et al. 2016 (GAE); lm-human-preferences `train_policy.py`, γ=1, λ=0.95 (c8).
    """
    mask = response_mask.bool()
    values = values.to(rewards.dtype)
    batch, length = rewards.shape
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    next_value = rewards.new_zeros(batch)
    next_adv = rewards.new_zeros(batch)
    reversed_columns: list[Tensor] = []
    for t in reversed(range(length)):
        valid = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * gae_lambda * next_adv
        # Carry the successor's state across masked positions instead of resetting it.
        next_value = torch.where(valid, values[:, t], next_value)
        next_adv = torch.where(valid, adv_t, next_adv)
        reversed_columns.append(torch.where(valid, adv_t, zero))
    advantages = torch.stack(reversed_columns[::-1], dim=1) if length else rewards.new_zeros(batch, 0)
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


def discounted_returns(rewards: Tensor, response_mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go G_t = Σ_{k ≥ t} γ^{(valid steps from t to k)} r_k over masked-in tokens, (B, T).

    This is GAE with V ≡ 0 and λ = 1 (then A_t = r_t + γ A_{t'}), so it shares its masking rules.
    """
    return gae(rewards, torch.zeros_like(rewards), response_mask, gamma, 1.0)[0]


def _group_stats(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-item (group sum, group mean, unbiased group std, group size), each (B,).

    Groups of size 1 get std 0 (denominator clamped to 1): no spread can be measured.
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts.to(scores.dtype)
    sums = scores.new_zeros(counts.shape[0]).index_add(0, inverse, scores)
    means = sums / n
    # Two-pass variance: subtracting the mean first avoids cancellation in Σx² − n·μ².
    sq_dev = scores.new_zeros(counts.shape[0]).index_add(0, inverse, (scores - means[inverse]) ** 2)
    stds = (sq_dev / (n - 1).clamp(min=1)).sqrt()
    return sums[inverse], means[inverse], stds[inverse], counts[inverse]


def grpo_advantages(
    scores: Tensor, group_ids: Tensor, response_mask: Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Group-relative advantage, broadcast to every response token.

    A_i = (s_i − mean_G(s)) / (std_G(s) + eps)   (GRPO, DeepSeekMath §4.1.2);
    A_i = s_i − mean_G(s)                         when `scale_by_std=False` (Dr. GRPO, Liu et al.
    2025: the std over-weights prompts that are almost all right or all wrong).
    std_G is the unbiased (Bessel) std, as `torch.std` in TRL and verl; a group of one gets A = 0.

    Shapes: `scores` (B,), `group_ids` (B,) int, `response_mask` (B, T) → (B, T), 0 where masked.
    Dr. GRPO's second fix, a constant loss normaliser, is the "seq_mean_token_sum_norm"
    aggregation in `masking.aggregate_token_loss`.
    """
    _, mean, std, _ = _group_stats(scores, group_ids)
    adv = scores - mean
    if scale_by_std:
        adv = adv / (std + eps)
    return _broadcast_to_tokens(adv, response_mask)


def rloo_advantages(scores: Tensor, group_ids: Tensor, response_mask: Tensor) -> Tensor:
    """REINFORCE leave-one-out: each response is baselined by the mean of the *other* responses to
    the same prompt, broadcast to every response token.

    A_i = s_i − (Σ_{j∈G} s_j − s_i) / (|G| − 1) = |G|/(|G| − 1) · (s_i − mean_G(s)).

    Shapes: `scores` (B,), `group_ids` (B,), `response_mask` (B, T) → (B, T). Every group needs at
    least 2 responses. Source: Ahmadian et al. 2024; HF blog "Putting RL back in RLHF".
    """
    sums, _, _, counts = _group_stats(scores, group_ids)
    if bool((counts < 2).any()):
        raise ValueError("RLOO needs at least 2 responses per group (group_ids with a single member found)")
    adv = scores - (sums - scores) / (counts.to(scores.dtype) - 1)
    return _broadcast_to_tokens(adv, response_mask)


def reinforce_pp_advantages(
    scores: Tensor,
    response_mask: Tensor,
    group_ids: Tensor | None = None,
    rewards: Tensor | None = None,
    gamma: float = 1.0,
    eps: float = 1e-8,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """REINFORCE++: returns normalised over the whole batch (all response tokens pooled).

    G_t = s                                  (scores only), or
    G_t = Σ_{k≥t} γ^{k−t} rewards_k          (per-token rewards, KL in the reward: s − β Σ_{k≥t} kl_k);
    A_t = (G_t − mean_batch G) / √(var_batch G + eps)   over all masked-in tokens (biased variance).

    With `group_ids` the group mean of the scores is subtracted from the score first ("REINFORCE++
    baseline", for several samples per prompt). Shapes: `scores` (B,), `response_mask` (B, T),
    `group_ids` (B,) or None, `rewards` (B, T) or None → (B, T), 0 where masked. `reduce_sum`
    (data parallel) sums over processes, so "the batch" is the global one (`masked_whiten`).
    Source: Hu 2025 (arXiv 2501.03262) eqs. 8–10; OpenRLHF and verl implementations.
    """
    baseline = _group_stats(scores, group_ids)[1] if group_ids is not None else torch.zeros_like(scores)
    if rewards is None:
        returns = _broadcast_to_tokens(scores - baseline, response_mask)
    else:
        # The score sits on the last real token of `rewards`, so the baseline is taken off there.
        at_last = torch.where(last_true_mask(response_mask), baseline.unsqueeze(-1).to(rewards.dtype), 0.0)
        returns = discounted_returns(rewards - at_last, response_mask, gamma)
    return masked_whiten(returns, response_mask, shift_mean=True, eps=eps, reduce_sum=reduce_sum)


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class EstimatorSpec:
    """One advantage estimator behind the common keyword-only signature (module docstring)."""

    name: str
    """Registry key, as written in configs."""
    fn: Callable[..., tuple[Tensor, Tensor | None]]
    """fn(*, scores, rewards, values, response_mask, group_ids, gamma, gae_lambda, reduce_sum)
    → (adv, returns | None)."""
    needs_values: bool
    """True: a critic must provide `values`, and the loop trains it on the returned `returns`."""
    needs_groups: bool
    """True: the rollout must sample several responses per prompt and pass `group_ids`."""
    recommended_agg_mode: AggMode
    """The token-loss aggregation the method was published with (`aggregate_token_loss`)."""


def _sequence_reward(scores: Tensor | None, rewards: Tensor | None, response_mask: Tensor) -> Tensor:
    """score − β Σ_t kl_t when per-token rewards are given (their sum), else the raw scores."""
    if rewards is not None:
        return masked_sum(rewards, response_mask, dim=-1)
    if scores is None:
        raise ValueError("pass `scores` or per-token `rewards`")
    return scores


def _require(name: str, **tensors: Tensor | None) -> None:
    missing = [key for key, value in tensors.items() if value is None]
    if missing:
        raise ValueError(f"advantage estimator {name!r} needs {', '.join(missing)}")


def _gae_entry(*, rewards=None, values=None, response_mask, gamma=1.0, gae_lambda=0.95, **_):
    _require("gae", rewards=rewards, values=values)
    return gae(rewards, values, response_mask, gamma, gae_lambda)


def _grpo_entry(*, scores=None, rewards=None, response_mask, group_ids=None, **_):
    _require("grpo", group_ids=group_ids)
    return grpo_advantages(_sequence_reward(scores, rewards, response_mask), group_ids, response_mask), None


def _dr_grpo_entry(*, scores=None, rewards=None, response_mask, group_ids=None, **_):
    _require("dr_grpo", group_ids=group_ids)
    seq = _sequence_reward(scores, rewards, response_mask)
    return grpo_advantages(seq, group_ids, response_mask, scale_by_std=False), None


def _rloo_entry(*, scores=None, rewards=None, response_mask, group_ids=None, **_):
    _require("rloo", group_ids=group_ids)
    return rloo_advantages(_sequence_reward(scores, rewards, response_mask), group_ids, response_mask), None


def _reinforce_pp_entry(*, scores=None, rewards=None, response_mask, gamma=1.0, reduce_sum=None, **_):
    _require("reinforce_pp", scores=scores)
    return reinforce_pp_advantages(scores, response_mask, rewards=rewards, gamma=gamma, reduce_sum=reduce_sum), None


def _reinforce_pp_baseline_entry(*, scores=None, rewards=None, response_mask, group_ids=None, gamma=1.0,
                                 reduce_sum=None, **_):
    # The group baseline is a mean of bare scores, so `scores` are needed even when `rewards` carry them.
    _require("reinforce_pp_baseline", scores=scores, group_ids=group_ids)
    return reinforce_pp_advantages(scores, response_mask, group_ids, rewards=rewards, gamma=gamma,
                                   reduce_sum=reduce_sum), None


def _spec(name, fn, needs_values, needs_groups, agg):
    return EstimatorSpec(name, fn, needs_values=needs_values, needs_groups=needs_groups, recommended_agg_mode=agg)


ADVANTAGE_ESTIMATORS: dict[str, EstimatorSpec] = {
    spec.name: spec
    for spec in (
        #     name                     fn                             values groups  aggregation
        _spec("gae",                   _gae_entry,                    True,  False, "token_mean"),
        _spec("grpo",                  _grpo_entry,                   False, True,  "seq_mean_token_mean"),
        _spec("dr_grpo",               _dr_grpo_entry,                False, True,  "seq_mean_token_sum_norm"),
        _spec("rloo",                  _rloo_entry,                   False, True,  "token_mean"),
        _spec("reinforce_pp",          _reinforce_pp_entry,           False, False, "token_mean"),
        _spec("reinforce_pp_baseline", _reinforce_pp_baseline_entry,  False, True,  "token_mean"),
    )
}
"""Name → EstimatorSpec. The PPO loop asks the spec (needs_values, needs_groups), never the name."""


def get_estimator(name: str) -> EstimatorSpec:
    """The registered estimator `name`; ValueError listing the valid names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid: {', '.join(ADVANTAGE_ESTIMATORS)}"
        ) from None
