"""Simulated annotators: Bradley–Terry comparisons, Plackett–Luce rankings, ratings, and the
Bayes ceiling, checked against closed forms and Monte Carlo (fixed seeds, so no flakes; the
tolerances are 4–5 standard errors so a wrong noise model still fails)."""

import itertools
import math

import numpy as np
import pytest

from rlhfkit.tasks import (
    DEFAULT_ANNOTATOR_TEMPERATURE,
    SimulatedAnnotator,
    bayes_ceiling,
    fit_temperature,
    get_task,
    noiseless_agreement,
)


class TableTask:
    """A stand-in task whose gold reward is looked up by response text ("g=<value>")."""

    name = "table"
    seed = 0
    max_response_words = 4

    def gold_reward(self, prompt, response, finished=True):
        return float(response.split("=")[1]) - (0.0 if finished else 1.0)

    def gold_rewards(self, prompts, responses, finished=None):
        flags = finished or [True] * len(responses)
        return [self.gold_reward(p, r, f) for p, r, f in zip(prompts, responses, flags)]

    def rating_thresholds(self):
        return (-1.5, -0.5, 0.5, 1.5)


def sigma(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_bayes_ceiling_hand_worked_and_validation():
    # Pairs (1, 0) and (0, 0) at τ = 1: (σ(1) + ½) / 2.
    assert bayes_ceiling([1.0, 0.0], [0.0, 0.0], 1.0) == pytest.approx((0.7310585786300049 + 0.5) / 2, rel=1e-12)
    # Symmetric in the pair order; max(p, 1 − p) for a single pair at τ = 0.5, Δ = −0.3.
    assert bayes_ceiling([0.0], [0.3], 0.5) == pytest.approx(sigma(0.6), rel=1e-12)
    with pytest.raises(ValueError):
        bayes_ceiling([1.0], [1.0, 2.0], 1.0)
    with pytest.raises(ValueError):
        bayes_ceiling([1.0], [0.0], 0.0)


def test_bayes_ceiling_matches_monte_carlo():
    """Labels drawn by BT; predicting the higher-gold side is right as often as the ceiling
    says, and a predictor that is right on only some pairs does worse."""
    rng = np.random.default_rng(0)
    g_a, g_b = rng.normal(size=2000), rng.normal(size=2000)
    tau = 0.7
    p = 1 / (1 + np.exp(-(g_a - g_b) / tau))
    labels = rng.random((50, 2000)) < p  # True = a wins; 50 label draws per pair
    bayes_right = (labels == (g_a > g_b)).mean()
    se = math.sqrt(0.25 / labels.size)
    assert bayes_right == pytest.approx(bayes_ceiling(g_a, g_b, tau), abs=5 * se)
    flipped = np.where(np.arange(2000) < 500, g_a < g_b, g_a > g_b)
    assert (labels == flipped).mean() < bayes_right - 0.05


def test_fit_temperature_inverts_the_ceiling():
    rng = np.random.default_rng(1)
    g_a, g_b = rng.normal(size=500), rng.normal(size=500)
    tau = fit_temperature(g_a, g_b, 0.75)
    assert bayes_ceiling(g_a, g_b, tau) == pytest.approx(0.75, abs=1e-9)
    with pytest.raises(ValueError, match="not reachable"):
        fit_temperature(g_a, g_b, 0.4)


def test_compare_follows_bradley_terry():
    ann = SimulatedAnnotator(TableTask(), temperature=0.5, seed=3)
    winner, p_a = ann.compare("x", "g=0.4", "g=0.1")
    assert p_a == pytest.approx(sigma(0.6), rel=1e-12) and winner in (0, 1)
    assert ann.compare("x", "g=0.4", "g=0.1", finished_a=False)[1] == pytest.approx(sigma(-1.4), rel=1e-12)
    n = 20_000
    wins = sum(ann.compare("x", "g=0.4", "g=0.1")[0] == 0 for _ in range(n))
    assert wins / n == pytest.approx(sigma(0.6), abs=5 * math.sqrt(0.25 / n))


def test_annotators_are_deterministic_per_seed_and_id():
    def draws(seed, name):
        ann = SimulatedAnnotator(TableTask(), temperature=1.0, seed=seed, annotator_id=name)
        return [ann.compare("x", "g=0", "g=0.1")[0] for _ in range(64)]

    assert draws(0, "a") == draws(0, "a")
    assert draws(0, "a") != draws(1, "a") and draws(0, "a") != draws(0, "b")
    with pytest.raises(ValueError):
        SimulatedAnnotator(TableTask(), temperature=0.0)


def test_measured_agreement_matches_temperature():
    """Agreement with the noiseless order over many pairs equals mean σ(|Δg|/τ) within MC
    error (computed here directly, not with `bayes_ceiling`)."""
    rng = np.random.default_rng(2)
    golds = rng.normal(size=(4000, 2)).round(3)
    a = [f"g={x}" for x in golds[:, 0]]
    b = [f"g={x}" for x in golds[:, 1]]
    tau = 0.8
    expected = [sigma(abs(x - y) / tau) for x, y in golds]
    ann = SimulatedAnnotator(TableTask(), temperature=tau, seed=4)
    measured = np.mean([noiseless_agreement(ann, ["x"] * 4000, a, b) for _ in range(3)])
    se = math.sqrt(sum(p * (1 - p) for p in expected) / 3) / 4000
    assert measured == pytest.approx(np.mean(expected), abs=5 * se)


def test_default_temperature_gives_human_like_agreement_on_demo_pairs():
    """The tuning target: ≈ 75 % agreement on same-prompt SFT-demo pairs (seed 7, which was
    not used for tuning), both as the implied ceiling and as measured."""
    task = get_task("reviews", seed=7)
    prompts, a, b = [], [], []
    for record in task.prompts("train", 1500):
        x, y = task.sample_demos(record.prompt, 2)
        prompts.append(record.prompt)
        a.append(x)
        b.append(y)
    g_a, g_b = task.gold_rewards(prompts, a), task.gold_rewards(prompts, b)
    implied = bayes_ceiling(g_a, g_b, DEFAULT_ANNOTATOR_TEMPERATURE)
    assert 0.73 <= implied <= 0.77
    ann = SimulatedAnnotator(task, seed=0)
    measured = np.mean([noiseless_agreement(ann, prompts, a, b) for _ in range(2)])
    assert measured == pytest.approx(implied, abs=4 * math.sqrt(0.19 / 3000))


def test_rank_is_plackett_luce():
    """K = 3: the frequency of every full order matches the PL formula
    P(i ≻ j ≻ k) = e^{s_i}/(e^{s_i}+e^{s_j}+e^{s_k}) · e^{s_j}/(e^{s_j}+e^{s_k}), s = g/τ."""
    golds, tau, n = [0.6, 0.0, -0.4], 0.5, 12_000
    ann = SimulatedAnnotator(TableTask(), temperature=tau, seed=5)
    responses = [f"g={g}" for g in golds]
    counts = {}
    for _ in range(n):
        ranks = tuple(ann.rank("x", responses))
        counts[ranks] = counts.get(ranks, 0) + 1
    s = [math.exp(g / tau) for g in golds]
    for order in itertools.permutations(range(3)):
        i, j, k = order
        p = s[i] / (s[i] + s[j] + s[k]) * s[j] / (s[j] + s[k])
        ranks = [0, 0, 0]
        for place, item in enumerate(order):
            ranks[item] = place + 1
        assert counts.get(tuple(ranks), 0) / n == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))


def test_rank_with_two_items_is_bradley_terry():
    ann = SimulatedAnnotator(TableTask(), temperature=0.5, seed=6)
    n = 10_000
    first = sum(ann.rank("x", ["g=0.3", "g=0.0"]) == [1, 2] for _ in range(n))
    assert first / n == pytest.approx(sigma(0.6), abs=5 * math.sqrt(0.25 / n))


def test_rank_ties_and_validity():
    ann = SimulatedAnnotator(TableTask(), temperature=0.01, seed=7)
    # Near-noiseless: exact order; equal gold shares a rank (competition ranking).
    assert ann.rank("x", ["g=0.0", "g=2.0", "g=1.0", "g=1.00"]) == [4, 1, 2, 2]
    assert ann.rank("x", ["g=1.0", "g=1.0", "g=1.0"]) == [1, 1, 1]
    # finished=False costs 1 in this stand-in gold.
    assert ann.rank("x", ["g=1.0", "g=0.5"], finished=[False, True]) == [2, 1]
    loose = SimulatedAnnotator(TableTask(), temperature=0.01, seed=7, tie_eps=0.15)
    assert loose.rank("x", ["g=0.0", "g=0.1", "g=0.2", "g=1.0"]) == [2, 2, 2, 1]
    noisy = SimulatedAnnotator(TableTask(), temperature=2.0, seed=8)
    for _ in range(200):
        ranks = noisy.rank("x", ["g=0.0", "g=0.5", "g=0.5", "g=1.0", "g=-1.0"])
        assert ranks[1] == ranks[2]
        assert sorted(ranks) in ([1, 1, 3, 4, 5], [1, 2, 2, 4, 5], [1, 2, 3, 3, 5], [1, 2, 3, 4, 4])


def test_ratings_follow_binned_gumbel_noise():
    """P(rating > r) = P(g + τ(G − γ) > t_r) = 1 − exp(−exp(−((t_r − g)/τ + γ))) for the
    four thresholds t_r, and the mean rating rises with gold."""
    tau, n = 0.6, 8_000
    ann = SimulatedAnnotator(TableTask(), temperature=tau, seed=9)
    gamma = 0.5772156649015329
    means = []
    for g in (-2.0, -0.7, 0.0, 0.4, 2.0):
        ratings = [ann.rate("x", f"g={g}") for _ in range(n)]
        assert set(ratings) <= {1, 2, 3, 4, 5}
        means.append(np.mean(ratings))
        for r, t in enumerate(TableTask().rating_thresholds(), start=1):
            p = 1 - math.exp(-math.exp(-((t - g) / tau + gamma)))
            share = np.mean([x > r for x in ratings])
            assert share == pytest.approx(p, abs=5 * math.sqrt(max(p * (1 - p), 1e-4) / n))
    assert means == sorted(means)


def test_reviews_ratings_span_the_scale():
    task = get_task("reviews", seed=0)
    thresholds = task.rating_thresholds()
    assert len(thresholds) == 4 and list(thresholds) == sorted(thresholds)
    ann = SimulatedAnnotator(task, seed=1)
    demos = task.sft_examples(600)
    ratings = [ann.rate(d.prompt, d.response) for d in demos]
    assert set(ratings) == {1, 2, 3, 4, 5}
    golds = np.array([d.meta["gold"] for d in demos])
    assert np.corrcoef(golds, ratings)[0, 1] > 0.5
