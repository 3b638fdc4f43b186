"""Masked reductions, whitening and token-loss aggregation.

Mask polarity everywhere: `mask` is bool (or 0/1), True = the position counts. Values at masked
positions are never read: they are replaced with 0 through `torch.where` before any arithmetic,
so NaN/inf garbage in padding cannot leak into results or gradients (`x * mask` would turn
`nan * 0` into NaN).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

AggMode = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
AGG_MODES: tuple[str, ...] = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x over positions where `mask` is True.

    Shapes: `x` and `mask` broadcastable to each other; `dim=None` sums everything (0-dim result),
    otherwise sums over `dim`.
    """
    masked = _zero_masked(x, mask)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ_mask x / Σ mask, over everything (`dim=None`) or along `dim`.

    A slice with no True position gives 0 (the count is clamped to 1) rather than NaN, so an empty
    row never poisons a batch average.
    """
    x, mask = torch.broadcast_tensors(x, mask.bool())
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of the masked entries of `x`, pooled over all dimensions (0-dim result).

    Var = Σ_mask (x − μ)² / n   (biased, the default), or × n/(n−1) when `unbiased`.
    The biased form matches TensorFlow's `tf.nn.moments`, which lm-human-preferences' `whiten`
    uses (rlhf-details c7); PyTorch's `Tensor.var` defaults to the unbiased one. With n = 1 the
    unbiased variance is undefined and comes out as inf/NaN.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = torch.broadcast_tensors(x, mask.bool())[1].sum().to(x.dtype)
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Whiten the masked entries of `x` with statistics pooled over all of them.

    y = (x − μ) / √(σ² + eps)  (+ μ again when `shift_mean=False`), σ² the *biased* variance.
    Masked positions come out as 0. Shapes: any; `mask` broadcastable to `x`.

    `reduce_sum` (data parallel) sums a tensor over processes, e.g. an all-reduce: μ and σ² are
    then those of the global batch, in the same two passes (Σx and n, then Σ(x − μ)²), so N
    processes with B rows each whiten exactly like one process with N·B rows.

    Source: lm-human-preferences `utils/core.py: whiten` (rewards are whitened with
    shift_mean=False, advantages with shift_mean=True); rlhf-details c7 test vector.
    """
    if reduce_sum is None:
        mean = masked_mean(x, mask)
        var = masked_var(x, mask)
    else:
        x_b, mask_b = torch.broadcast_tensors(x, mask.bool())
        total, count = reduce_sum(torch.stack([masked_sum(x_b, mask_b), mask_b.sum().to(x.dtype)]))
        count = count.clamp(min=1)
        mean = total / count
        var = reduce_sum(masked_sum((x_b - mean) ** 2, mask_b)) / count
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_masked(whitened, mask)


def last_true_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True only at the last True position of each row of `mask` (all False for a row
    without any True). Used to place the sequence score on the last real response token."""
    mask = mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device)
    # Index of the last True: max over positions where mask is True (−1 when none).
    last = torch.where(mask, positions, -1).amax(dim=-1, keepdim=True)
    return mask & (positions == last)


def aggregate_token_loss(
    loss: torch.Tensor, mask: torch.Tensor, mode: AggMode, max_len: int | None = None
) -> torch.Tensor:
    """Reduce per-token losses (B, T) to a scalar; `mask` (B, T) True = response token.

    - "token_mean": Σ_{b,t} m·ℓ / Σ m — every token weighs the same (PPO as in lm-h-p, TRL,
      DAPO's "token-level" loss).
    - "seq_mean_token_mean": (1/B') Σ_b [Σ_t m·ℓ / Σ_t m] — each sequence weighs the same (GRPO,
      DeepSeekMath eq. 3); B' counts only rows with at least one token.
    - "seq_mean_token_sum_norm": (1/B) Σ_b Σ_t m·ℓ / max_len — Dr. GRPO: a constant normaliser
      (the generation budget) so that long and short answers get the same per-token weight.
      `max_len` is required: defaulting to the padded width would make the loss depend on padding.

    Source: rlhf-book ch. 6 (loss aggregation example, rlhf-details c″); Liu et al. 2025 (Dr. GRPO).
    """
    mask = mask.bool()
    if mode == "token_mean":
        return masked_mean(loss, mask)
    if mode == "seq_mean_token_mean":
        per_seq = masked_mean(loss, mask, dim=-1)
        has_tokens = mask.any(dim=-1)
        return masked_mean(per_seq, has_tokens)
    if mode == "seq_mean_token_sum_norm":
        if max_len is None or max_len <= 0:
            raise ValueError("agg mode 'seq_mean_token_sum_norm' needs max_len > 0 (the generation budget)")
        return (masked_sum(loss, mask, dim=-1) / max_len).mean()
    raise ValueError(f"unknown loss aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")
