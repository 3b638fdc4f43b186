"""Evaluation statistics against hand-worked values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

from rlhfkit.eval.stats import (bradley_terry, distinct_n, fit_bon, fit_rl, length_matched_win_rate, win_rate,
                                wilson_interval_with_ties)

Z95 = 1.959963984540054


def test_win_rate_without_ties_is_wilson():
    # 7 wins in 10: the textbook Wilson interval (p̂ + z²/2n ± z√(p̂q̂/n + z²/4n²)) / (1 + z²/n)
    # = (0.3968, 0.8922) to 4 decimals.
    result = win_rate([1] * 7 + [0] * 3)
    p, n, z2 = 0.7, 10, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    assert result.win_rate == pytest.approx(0.7, rel=1e-12)
    assert (result.low, result.high) == pytest.approx((centre - half, centre + half), rel=1e-10)
    assert (result.low, result.high) == pytest.approx((0.3968, 0.8922), abs=5e-5)
    assert (result.wins, result.ties, result.losses, result.n) == (7, 0, 3, 10)


def test_win_rate_counts_ties_half_and_narrows_the_interval():
    # 7 wins, 2 ties, 1 loss: p̂ = (7 + 2·½)/10 = 0.8; tie mass c = 2·(½·½)/10 = 0.05.
    scores = [1] * 7 + [0.5] * 2 + [0]
    result = win_rate(scores)
    assert result.win_rate == pytest.approx(0.8, rel=1e-12)
    assert (result.wins, result.ties, result.losses) == (7, 2, 1)

    # Independent reference: the interval ends solve n(p̂ − p)² = z²(p(1 − p) − c) on each side of p̂.
    def score_eq(p):
        return 10 * (0.8 - p) ** 2 - Z95**2 * (p * (1 - p) - 0.05)

    low = optimize.brentq(score_eq, 0.3, 0.8, xtol=1e-14)
    high = optimize.brentq(score_eq, 0.8, 0.99, xtol=1e-14)
    assert (result.low, result.high) == pytest.approx((low, high), rel=1e-9)
    assert (low, high) == pytest.approx((0.52319, 0.91030), abs=5e-5)  # worked by hand
    # A plain binary Wilson with the ties as half a win each would be wider (c = 0).
    plain_low, plain_high = wilson_interval_with_ties(0.8, 0.0, 10, Z95)
    assert plain_high - plain_low > high - low


def test_all_ties_give_a_point_interval_at_one_half():
    result = win_rate([0.5] * 20)
    assert (result.win_rate, result.low, result.high) == pytest.approx((0.5, 0.5, 0.5), abs=1e-12)


def test_win_rate_rejects_scores_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rate([1.2, 0.0])
    with pytest.raises(ValueError, match="no comparisons"):
        win_rate([])


def test_bradley_terry_recovers_strengths_from_consistent_win_matrix():
    # Expected counts under θ = (−1, 0, 1) make the likelihood equations hold exactly at θ.
    theta = np.array([-1.0, 0.0, 1.0])
    wins = 10 * special.expit(theta[:, None] - theta[None, :])
    np.fill_diagonal(wins, 0)
    assert bradley_terry(wins) == pytest.approx(theta, abs=1e-6)


def test_bradley_terry_matches_choix_on_binary_comparisons():
    choix = pytest.importorskip("choix")
    # (winner, loser) pairs among 4 models; every model wins and loses at least once.
    data = [(0, 1), (1, 0), (0, 1), (1, 2), (2, 1), (1, 2), (2, 3), (3, 2), (2, 3), (0, 3), (3, 0), (0, 2)]
    wins = np.zeros((4, 4))
    for winner, loser in data:
        wins[winner, loser] += 1
    ours = bradley_terry(wins)
    reference = choix.opt_pairwise(4, data, alpha=0.0, method="BFGS", tol=1e-12)
    assert ours == pytest.approx(reference - reference.mean(), abs=1e-5)
    assert ours[0] > ours[1] > ours[2] > ours[3]
    # choix's penalty is α·|θ|², ours (l2/2)·|θ|².
    ridge_ref = choix.opt_pairwise(4, data, alpha=0.1, method="BFGS", tol=1e-12)
    assert bradley_terry(wins, l2=0.2) == pytest.approx(ridge_ref - ridge_ref.mean(), abs=1e-5)


def test_distinct_n_hand_worked():
    texts = ["a b a b", "a b c"]
    # unigrams: 7 in all, {a, b, c} distinct; bigrams: ab ba ab | ab bc → 3 of 5.
    assert distinct_n(texts, 1) == pytest.approx(3 / 7, rel=1e-12)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5, rel=1e-12)
    assert distinct_n(["a"], 2) == 0.0


def test_length_matched_win_rate_saturated_two_groups():
    # Δ = +1: 4 wins of 5; Δ = −1: 2 of 4. Two Δ values and two coefficients → the fit is saturated:
    # a + b = logit 0.8 = ln 4, a − b = logit 0.5 = 0 → a = b = ln 2, σ(a) = 2/3, while the raw
    # win rate is 6/9. se(a)² = (1/(5·0.8·0.2) + 1/(4·0.5·0.5))/4 = 0.5625 → se = 0.75.
    scores = [1, 1, 1, 1, 0, 1, 1, 0, 0]
    delta = [1] * 5 + [-1] * 4
    result = length_matched_win_rate(scores, delta)
    assert result.win_rate == pytest.approx(2 / 3, rel=1e-5)  # the 1e-6 ridge moves it by ~1e-7
    assert result.slope == pytest.approx(math.log(2), rel=1e-5)
    expected = (special.expit(math.log(2) - Z95 * 0.75), special.expit(math.log(2) + Z95 * 0.75))
    assert (result.low, result.high) == pytest.approx(expected, rel=1e-5)


def test_length_matched_win_rate_agrees_with_sklearn_on_fractional_scores():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    delta = rng.integers(-6, 7, size=200).astype(float)
    scores = np.clip(special.expit(0.3 + 0.25 * delta) + rng.normal(0, 0.2, 200), 0, 1).round(2)
    ours = length_matched_win_rate(scores, delta)
    # A fractional score s is a win with weight s plus a loss with weight 1 − s.
    x = np.concatenate([delta, delta])[:, None]
    y = np.concatenate([np.ones(200), np.zeros(200)])
    weights = np.concatenate([scores, 1 - scores])
    model = linear_model.LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x, y, sample_weight=weights)
    assert ours.win_rate == pytest.approx(special.expit(model.intercept_[0]), rel=1e-4)
    assert ours.slope == pytest.approx(model.coef_[0, 0], rel=1e-4)


def test_length_matched_without_length_variation():
    same = length_matched_win_rate([1, 0, 1, 1], [0, 0, 0, 0])
    assert same.win_rate == pytest.approx(0.75) and same.slope == 0.0
    assert math.isnan(length_matched_win_rate([1, 0], [3, 3]).win_rate)


def test_gao_fits_recover_known_coefficients():
    d = np.linspace(0.0, 3.2, 17)
    bon = fit_bon(d, d * (1.3 - 0.4 * d))
    assert (bon.alpha, bon.beta, bon.r2) == pytest.approx((1.3, 0.4, 1.0), rel=1e-9)
    # Peak of d(α − βd): d* = α/2β = 1.625, R* = α²/4β = 1.05625.
    assert bon.peak() == pytest.approx((1.625, 1.05625), rel=1e-9)

    rl_curve = np.where(d > 0, d * (1.0 - 0.5 * np.log(np.where(d > 0, d, 1))), 0.0)
    rl = fit_rl(d, rl_curve)
    assert (rl.alpha, rl.beta, rl.r2) == pytest.approx((1.0, 0.5, 1.0), rel=1e-9)
    # Peak of d(α − β log d): d* = e^(α/β − 1) = e, R* = β·d* = e/2.
    assert rl.peak() == pytest.approx((math.e, math.e / 2), rel=1e-9)
    assert rl.predict([math.e]) == pytest.approx([math.e / 2], rel=1e-9)


def test_gao_fit_r2_drops_with_noise_and_wrong_form():
    rng = np.random.default_rng(1)
    d = np.linspace(0.1, 3.0, 30)
    truth = d * (1.3 - 0.4 * d)
    noisy = fit_bon(d, truth + rng.normal(0, 0.05, d.size))
    assert 0.9 < noisy.r2 < 1.0
    assert noisy.alpha == pytest.approx(1.3, abs=0.1)
    assert fit_rl(d, truth).r2 < 1.0
