"""Reward-model agreement and calibration metrics (rlhf-details b9, b10, d4).

Calibration here is of a binary event: `probs` are predicted P(event) and `outcomes` say whether
it happened. For an RM on pairs, present each pair in a random order and use
p = σ(r_A − r_B) for the event "A is preferred" — with pairs always in (chosen, rejected) order
every outcome is 1 and only the upper half of the diagram is tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Fraction of pairs the RM orders like the label; a tie (r_c = r_r) counts ½ (the expected
    accuracy of breaking it by a coin flip). Shapes: (N,) each."""
    if r_chosen.numel() == 0:
        raise ValueError("no pairs")
    wins = (r_chosen > r_rejected).double() + 0.5 * (r_chosen == r_rejected).double()
    return wins.mean().item()


def wilson_interval_with_ties(p_hat: float, tie_mass: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval for the mean of n scores in [0, 1].

    For a score s ∈ [0, 1] with mean p, Var(s) = p(1 − p) − c with c = E[s(1 − s)] (c = t/4 when a
    fraction t of comparisons are ½-ties). Holding the observed c fixed, the interval is the set of p
    with n(p̂ − p)² ≤ z²(p(1 − p) − c), i.e. the roots of

        (n + z²) p² − (2n p̂ + z²) p + (n p̂² + z² c) = 0.

    With c = 0 (no ties) this is exactly Wilson (1927); with every comparison a tie (p̂ = ½, c = ¼)
    the interval shrinks to the point ½. The discriminant is 4nz²·(sample variance) + z⁴(1 − 4c) ≥ 0.
    """
    a = n + z * z
    b = 2 * n * p_hat + z * z
    disc = b * b - 4 * a * (n * p_hat * p_hat + z * z * tie_mass)
    half = math.sqrt(max(disc, 0.0))
    return max(0.0, (b - half) / (2 * a)), min(1.0, (b + half) / (2 * a))


def pairwise_accuracy_interval(r_chosen: Tensor, r_rejected: Tensor, z: float = 1.959963984540054) -> tuple[float, float]:
    """Interval for `pairwise_accuracy` (95 % by default): each pair scores 1, ½ (reward tie) or
    0, and `wilson_interval_with_ties` bounds their mean over the n pairs."""
    scores = (r_chosen > r_rejected).double() + 0.5 * (r_chosen == r_rejected).double()
    tie_mass = float((scores * (1 - scores)).mean())
    return wilson_interval_with_ties(float(scores.mean()), tie_mass, scores.numel(), z)


@dataclass(frozen=True)
class ReliabilityTable:
    """Equal-width reliability diagram on [0, 1], float64 tensors; empty bins hold NaN means."""

    bin_edges: Tensor
    """(n_bins + 1,) edges 0, 1/n, …, 1. Bin k is [edge_k, edge_{k+1}); the last bin includes 1."""
    mean_confidence: Tensor
    """(n_bins,) mean predicted probability in each bin."""
    accuracy: Tensor
    """(n_bins,) observed frequency of the event in each bin."""
    count: Tensor
    """(n_bins,) number of predictions in each bin (int64)."""


def reliability_table(probs: Tensor, outcomes: Tensor, n_bins: int = 10) -> ReliabilityTable:
    """Bin predictions by probability and compare mean prediction with observed frequency.
    Shapes: `probs` (N,) in [0, 1], `outcomes` (N,) bool or 0/1."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = probs.detach().cpu().double().flatten()
    y = outcomes.detach().cpu().double().flatten()
    if p.numel() == 0 or p.shape != y.shape:
        raise ValueError("probs and outcomes must be non-empty and the same size")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("probs must lie in [0, 1]")
    # k / n rather than linspace: the edge is then the double nearest to k/n, the same value a
    # caller's probability k/n has, so such a probability lands in bin k as documented.
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    # Searching only the inner edges with right=True puts a value equal to an edge into the bin
    # that starts there, and p = 1 into the last bin.
    index = torch.bucketize(p, edges[1:-1], right=True)
    count = torch.bincount(index, minlength=n_bins)
    conf = torch.zeros(n_bins, dtype=torch.float64).index_add(0, index, p) / count
    acc = torch.zeros(n_bins, dtype=torch.float64).index_add(0, index, y) / count
    return ReliabilityTable(bin_edges=edges, mean_confidence=conf, accuracy=acc, count=count)


def expected_calibration_error(probs: Tensor, outcomes: Tensor, n_bins: int = 10) -> float:
    """ECE = Σ_k (n_k / N) · |accuracy_k − confidence_k| over non-empty equal-width bins.
    Source: Naeini et al. 2015; Guo et al. 2017 eq. 3."""
    table = reliability_table(probs, outcomes, n_bins)
    filled = table.count > 0
    gaps = (table.accuracy - table.mean_confidence).abs()
    weights = table.count.double() / table.count.sum()
    return (weights[filled] * gaps[filled]).sum().item()
