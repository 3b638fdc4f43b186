"""Pairwise accuracy and calibration, by hand."""

import math

import pytest
import torch

from rlhfkit.algos.calibration import (expected_calibration_error, pairwise_accuracy, pairwise_accuracy_interval,
                                       reliability_table)


def test_pairwise_accuracy_counts_ties_half():
    r_c = torch.tensor([2.0, 1.0, 0.5, 3.0])
    r_r = torch.tensor([1.0, 1.0, 0.7, -3.0])
    assert pairwise_accuracy(r_c, r_r) == pytest.approx((1 + 0.5 + 0 + 1) / 4, rel=1e-12)


PROBS = torch.tensor([0.05, 0.15, 0.12, 0.95, 0.85, 1.0])
OUTCOMES = torch.tensor([0, 1, 0, 1, 0, 1])


def test_ece_by_hand():
    # bins: 0 {0.05: 0}, 1 {0.15: 1, 0.12: 0}, 8 {0.85: 0}, 9 {0.95: 1, 1.0: 1}
    gaps = [abs(0 - 0.05), 2 * abs(0.5 - 0.135), abs(0 - 0.85), 2 * abs(1 - 0.975)]
    assert expected_calibration_error(PROBS, OUTCOMES) == pytest.approx(sum(gaps) / 6, rel=1e-6)
    assert expected_calibration_error(torch.tensor([0.25, 0.75]), torch.tensor([0, 1]), n_bins=2) == pytest.approx(
        0.25, rel=1e-6)
    # Perfect calibration in every bin.
    assert expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.0


def test_reliability_table_bins_and_edges():
    table = reliability_table(PROBS, OUTCOMES, n_bins=10)
    assert table.bin_edges[3].item() == 0.3 and table.bin_edges[-1].item() == 1.0
    assert table.count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 1, 2]
    assert table.accuracy[1].item() == 0.5 and math.isnan(table.accuracy[2].item())
    assert table.mean_confidence[9].item() == pytest.approx(0.975, rel=1e-6)
    # A probability equal to an inner edge falls into the bin that starts there.
    edge = reliability_table(torch.tensor([0.3, 0.1, 0.0]), torch.tensor([1, 1, 0]), n_bins=10)
    assert edge.count.tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        reliability_table(torch.tensor([1.2]), torch.tensor([1]))


def test_pairwise_accuracy_interval_is_wilson_on_the_pair_scores():
    # 8 of 10 pairs right, 1 reward tie (½), 1 wrong: mean 0.85, tie mass c = ¼·(1/10).
    chosen = torch.tensor([1.0] * 8 + [0.0, 0.0])
    rejected = torch.tensor([0.0] * 8 + [0.0, 1.0])
    low, high = pairwise_accuracy_interval(chosen, rejected)
    n, z, p, c = 10, 1.959963984540054, 0.85, 0.025
    # Roots of (n + z²)p² − (2np̂ + z²)p + (np̂² + z²c) = 0, by hand.
    a, b, k = n + z * z, 2 * n * p + z * z, n * p * p + z * z * c
    root = math.sqrt(b * b - 4 * a * k)
    assert low == pytest.approx((b - root) / (2 * a)) and high == pytest.approx((b + root) / (2 * a))
    assert low < 0.85 < high
