"""Reward-model losses (pairwise, K-wise, Plackett–Luce), their regularisers (zero-centring, an LM
loss on the chosen response), margins from preference strength, and the combination of several
reward models or heads.

Conventions: `ranks` use 1 = best, larger = worse, equal values = tie (as `data.schemas.Ranking`);
`response_mask` (B, K) True = a real response (rows are padded to the largest K). Rewards of
padded responses are replaced by 0 before use, so garbage there cannot produce NaN gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
TieMode = Literal["incomparable", "breslow"]
CombineMode = Literal["weighted_sum", "mean", "min", "mean_minus_std", "mean_minus_var"]
COMBINE_MODES: tuple[str, ...] = ("weighted_sum", "mean", "min", "mean_minus_std", "mean_minus_var")

MARGIN_SMALL = 1.0
"""Llama 2 "margin small" scale: {1, 2/3, 1/3, 0} for strength {3, 2, 1, 0} (Llama 2 Table 27)."""
MARGIN_LARGE = 3.0
"""Llama 2 "margin large" scale: {3, 2, 1, 0}."""
MAX_STRENGTH = 3
"""Top of the 4-level strength scale: 3 = significantly better … 0 = negligibly better / unsure."""


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | float | None = None) -> Tensor:
    """Per-pair Bradley–Terry loss −log σ(r_c − r_r − m), computed with `logsigmoid` (no overflow
    for large gaps). Shapes: (B,) each → (B,); the caller averages.

    Source: InstructGPT eq. 1; margin m ≥ 0 from Llama 2 §3.2.2 (see `strength_to_margin`).
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def grouped_pairwise_loss(
    rewards: Tensor, ranks: Tensor, response_mask: Tensor, margins: Tensor | None = None
) -> Tensor:
    """K-wise pairwise loss: every pair of real responses of one prompt with different ranks,
    averaged over that prompt's pairs (InstructGPT's 1/C(K,2) when there are no ties).

    loss_b = (1/P_b) Σ_{i,j real, rank_i < rank_j} −log σ(r_i − r_j − m_ij),  P_b = number of such pairs.

    Shapes: `rewards`, `ranks`, `response_mask` (B, K); `margins` (B, K, K) or None, `margins[b,i,j]`
    the margin required when i beats j → (B,) per-prompt loss (0 for a prompt with no strict pair;
    average over prompts that have one). Keeping a prompt's C(K,2) pairs together is what stops the
    RM overfitting within one epoch (InstructGPT §3.5 footnote; rlhf-details a2).
    """
    mask = response_mask.bool()
    r = torch.where(mask, rewards, 0.0)
    beats = (ranks.unsqueeze(-1) < ranks.unsqueeze(-2)) & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    diff = r.unsqueeze(-1) - r.unsqueeze(-2)
    if margins is not None:
        diff = diff - torch.where(beats, margins.to(diff.dtype), 0.0)
    pair_loss = torch.where(beats, -F.logsigmoid(diff), 0.0)
    n_pairs = beats.sum(dim=(-2, -1)).clamp(min=1)
    return pair_loss.sum(dim=(-2, -1)) / n_pairs.to(pair_loss.dtype)


def plackett_luce_loss(
    rewards: Tensor, ranks: Tensor, response_mask: Tensor, ties: TieMode = "incomparable"
) -> Tensor:
    """Negative log Plackett–Luce likelihood of each prompt's ranking, (B, K) → (B,).

    Without ties: −Σ_k [r_(k) − log Σ_{j ≥ k} exp r_(j)], items in rank order. K = 2 gives exactly
    Bradley–Terry, −log σ(r_1 − r_2).

    Ties (items sharing a rank form a group placed as a set):
    - "incomparable" (default): tied items never appear in each other's denominator; each item i
      contributes r_i − log Σ_{j ∈ {i} ∪ worse(i)} exp r_j. A tie group with nothing below it adds 0,
      so a K = 2 tie gives no loss, and a "best of K" label (ranks 1, 2, 2, …) reduces to the softmax
      cross-entropy over the K rewards that lm-human-preferences' `PickBest` trains (rlhf-details a3).
    - "breslow": Breslow's (1974) approximation from Cox regression — every tied item is placed
      against the whole remaining set including its tie-mates: Σ_{i∈D} r_i − |D| log Σ_{j ∉ better(D)} exp r_j.
      A final tie then still costs something (2·log 2 for a K = 2 tie at equal rewards), and its
      gradient pulls the tied rewards together.

    Source: Plackett 1975, Luce 1959; rlhf-book ch. 5 (K-wise loss).
    """
    if ties not in ("incomparable", "breslow"):
        raise ValueError(f"unknown tie treatment {ties!r}; valid: incomparable, breslow")
    mask = response_mask.bool()
    r = torch.where(mask, rewards, 0.0)
    rank_i, rank_j = ranks.unsqueeze(-1), ranks.unsqueeze(-2)
    in_denominator = (rank_j > rank_i) if ties == "incomparable" else (rank_j >= rank_i)
    # Item i is always in its own denominator, so every log-sum-exp is over a non-empty set.
    eye = torch.eye(r.shape[-1], dtype=torch.bool, device=r.device)
    in_denominator = (in_denominator & mask.unsqueeze(-2)) | eye
    log_denominator = torch.logsumexp(r.unsqueeze(-2).masked_fill(~in_denominator, float("-inf")), dim=-1)
    return -torch.where(mask, r - log_denominator, 0.0).sum(dim=-1)


def centering_loss(r_chosen: Tensor, r_rejected: Tensor, coef: float) -> Tensor:
    """coef · mean((r_c + r_r)²); (B,) each → scalar. BT only sees differences, so the reward's
    offset is free; this pins it near 0. Eisenstein et al. 2023; TRL `center_rewards_coefficient`
    (recommended 0.01)."""
    return coef * ((r_chosen + r_rejected) ** 2).mean()


def chosen_lm_loss(logprobs: Tensor, token_mask: Tensor) -> Tensor:
    """Mean token negative log-likelihood of each chosen response given its prompt, (B, L) → (B,).

    nll_b = −(1/n_b) Σ_t m_{b,t} · log π(y_{b,t} | x_b, y_{b,<t}),   n_b = Σ_t m_{b,t}.

    `logprobs` (B, L): log-probabilities of the chosen response's tokens (each already conditioned
    on the prompt and the earlier response tokens; `logprobs.logprobs_from_logits` gives them);
    `token_mask` (B, L) True = a real target token. A row without one gives 0. Values at masked
    positions are never read. The RM trainer adds lm_coef · mean_b nll_b to the preference loss,
    each group weighing the same as in the preference loss; MOSS-RLHF instead averages over all
    chosen tokens of its batch (token-weighted).

    Source: Secrets of RLHF I (Zheng et al. 2023), β_rm; MOSS-RLHF `reward_lm_loss_factor`
    (rlhf-details b4).
    """
    mask = token_mask.bool()
    total = torch.where(mask, logprobs, 0.0).sum(dim=-1)
    return -total / mask.sum(dim=-1).clamp(min=1).to(total.dtype)


def strength_to_margin(strength: Tensor | int, scale: float = MARGIN_SMALL, max_strength: int = MAX_STRENGTH) -> Tensor:
    """Margin m = scale · strength / max_strength for the BT margin loss.

    With the 4-level scale (3 = significantly better, 0 = negligibly better / unsure):
    scale = MARGIN_SMALL → {3: 1, 2: 2/3, 1: 1/3, 0: 0}; scale = MARGIN_LARGE → {3, 2, 1, 0}.
    Source: Llama 2 §3.2.2 and Table 27; rlhf-details b4.
    """
    strength = torch.as_tensor(strength, dtype=torch.get_default_dtype())
    if bool(((strength < 0) | (strength > max_strength)).any()):
        raise ValueError(f"strength must lie in [0, {max_strength}]")
    return scale * strength / max_strength


def combine_rewards(
    rewards: Tensor,
    mode: CombineMode,
    weights: Tensor | None = None,
    uncertainty_coef: float | None = None,
) -> Tensor:
    """Combine M reward models (or heads) into one score per sample, (M, B) → (B,).

    - "weighted_sum": Σ_m w_m r_m (`weights` (M,); default uniform 1/M, i.e. the mean);
    - "mean": mean over members;
    - "min": worst case over members (Coste et al. 2023 "WCO");
    - "mean_minus_std": mean − λ·std over members (uncertainty-weighted, "UWO"-style);
    - "mean_minus_var": mean − λ·var, Coste et al.'s UWO exactly (λ = 0.5 best for BoN there).
    std/var are population (÷M) statistics, as Coste's Var_i. λ is `uncertainty_coef`.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (M, B), got shape {tuple(rewards.shape)}")
    if mode == "weighted_sum":
        w = torch.full((rewards.shape[0],), 1.0 / rewards.shape[0]) if weights is None else weights
        return (w.to(rewards).unsqueeze(-1) * rewards).sum(0)
    if mode == "mean":
        return rewards.mean(0)
    if mode == "min":
        return rewards.amin(0)
    if mode in ("mean_minus_std", "mean_minus_var"):
        if uncertainty_coef is None:
            raise ValueError(f"mode {mode!r} needs uncertainty_coef (λ)")
        var = rewards.var(0, unbiased=False)
        spread = var.sqrt() if mode == "mean_minus_std" else var
        return rewards.mean(0) - uncertainty_coef * spread
    raise ValueError(f"unknown combine mode {mode!r}; valid: {', '.join(COMBINE_MODES)}")
