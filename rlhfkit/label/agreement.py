"""Agreement, bias and aggregation statistics over annotator labels (pure functions, no DB).

Input shape used throughout: `units`, a mapping unit id → {rater id → label}. A unit is one task
(or one (task, candidate) cell for rank data). Labels are hashable (nominal) or numbers.
Library implementations are used where a well-kept one exists: scikit-learn (Cohen's κ),
statsmodels (Fleiss' κ), `krippendorff` (α), scipy (Kendall's τ-b), choix (Bradley–Terry /
Plackett–Luce); this module only arranges the data and documents the choices.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

Units = Mapping[Hashable, Mapping[Hashable, Any]]
Z95 = 1.959963984540054
"""Two-sided 95 % standard-normal quantile."""


def raw_agreement(units: Units, exclude: frozenset = frozenset()) -> tuple[float | None, int]:
    """Share of agreeing rater pairs: Σ_u Σ_{i<j} [y_ui = y_uj] / number of pairs.

    Labels in `exclude` are dropped before pairing (e.g. `{"tie"}` gives FastChat's agreement
    "without ties", `compute_agreement.py`). Returns (value, pairs); value None with no pairs.
    """
    agree = pairs = 0
    for ratings in units.values():
        labels = [y for y in ratings.values() if y not in exclude]
        for a, b in combinations(labels, 2):
            pairs += 1
            agree += a == b
    return (agree / pairs if pairs else None), pairs


def cohen_kappa(units: Units, rater_a: Hashable, rater_b: Hashable) -> float | None:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) over units rated by both (scikit-learn).

    None when fewer than 2 shared units or when both raters use one and the same label.
    """
    from sklearn.metrics import cohen_kappa_score

    shared = [(r[rater_a], r[rater_b]) for r in units.values() if rater_a in r and rater_b in r]
    if len(shared) < 2 or len({y for pair in shared for y in pair}) < 2:
        return None
    a, b = zip(*shared, strict=True)
    return float(cohen_kappa_score([str(y) for y in a], [str(y) for y in b]))


def fleiss_kappa(units: Units) -> tuple[float | None, int]:
    """Fleiss' κ (statsmodels, method 'fleiss') over the units with the modal rating count n ≥ 2.

    Fleiss' κ needs the same number of ratings per unit; units with another count are left out
    (their number is `len(units) - used`). Returns (κ, units used).
    """
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    counts = Counter(len(r) for r in units.values() if len(r) >= 2)
    if not counts:
        return None, 0
    n = max(counts, key=lambda c: (counts[c], c))
    rows = [list(r.values()) for r in units.values() if len(r) == n]
    cats = sorted({str(y) for row in rows for y in row})
    if len(rows) < 2 or len(cats) < 2:
        return None, len(rows)
    table = np.array([[sum(str(y) == c for y in row) for c in cats] for row in rows])
    return float(sm_fleiss(table, method="fleiss")), len(rows)


def krippendorff_alpha(units: Units, level: str = "nominal") -> float | None:
    """Krippendorff's α = 1 − D_o / D_e (package `krippendorff`); handles missing ratings.

    `level`: nominal (labels), ordinal (ranks, ratings) or interval. Nominal labels are coded
    as integers first. None when no unit has 2 ratings or only one value occurs.
    """
    import krippendorff

    raters = sorted({r for ratings in units.values() for r in ratings}, key=str)
    keys = [u for u, ratings in units.items() if len(ratings) >= 2]
    values = {y for u in keys for y in units[u].values()}
    if not keys or len(values) < 2:
        return None
    code = {y: i for i, y in enumerate(sorted(values, key=str))} if level == "nominal" else None
    data = np.full((len(raters), len(keys)), np.nan)
    for j, u in enumerate(keys):
        for i, r in enumerate(raters):
            if r in units[u]:
                y = units[u][r]
                data[i, j] = code[y] if code is not None else float(y)
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def mean_kendall_tau(
        rankings: Mapping[Hashable, Mapping[Hashable, Sequence[int]]]) -> tuple[float | None, int]:
    """Mean Kendall τ-b (scipy; handles ties) over all rater pairs of every unit.

    `rankings`: unit → {rater → ranks per candidate}. Pairs where τ is undefined (a rater gave
    all candidates one rank) are skipped. Returns (mean τ, pairs used).
    """
    from scipy.stats import kendalltau

    taus = []
    for ratings in rankings.values():
        for a, b in combinations(ratings.values(), 2):
            tau = kendalltau(a, b).statistic
            if not math.isnan(tau):
                taus.append(float(tau))
    return (sum(taus) / len(taus) if taus else None), len(taus)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion p̂ = successes / n.

    centre = (p̂ + z²/2n) / (1 + z²/n), half = z √(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n).
    """
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def position_bias(first_won: Sequence[bool], shown: Sequence[int]) -> dict[str, Any]:
    """P(first-shown response wins) over votes with a single winner, with a Wilson 95 % interval,
    beside its chance level: the mean of 1/k over the votes, k = responses shown (½ for pairwise
    decisive votes). An interval excluding the chance level flags a bias."""
    n, k = len(first_won), sum(first_won)
    return {"p_first_wins": k / n if n else None, "chance": sum(1 / s for s in shown) / n if n else None,
            "n": n, "ci95": wilson_interval(k, n)}


def win_rate(outcomes: Sequence[float]) -> dict[str, Any]:
    """Win rate of model A with ties as ½: w = mean(s), s ∈ {1, ½, 0} per vote.

    95 % interval: normal approximation w ± z·sd(s)/√n, clipped to [0, 1] (with ties the
    outcome is not Bernoulli, so the Wilson interval does not apply).
    """
    n = len(outcomes)
    if n == 0:
        return {"win_rate": None, "n": 0, "ties": 0, "ci95": None}
    s = np.asarray(outcomes, dtype=float)
    w = float(s.mean())
    half = Z95 * float(s.std(ddof=1)) / math.sqrt(n) if n > 1 else 1.0
    return {"win_rate": w, "n": n, "ties": int((s == 0.5).sum()),
            "ci95": (max(0.0, w - half), min(1.0, w + half))}


def bradley_terry(n_items: int, wins: Sequence[tuple[int, int]], ties: Sequence[tuple[int, int]] = (),
                  alpha: float = 0.01) -> list[float]:
    """Bradley–Terry log-strengths θ with P(i beats j) = σ(θ_i − θ_j), by choix's I-LSR.

    `wins` are (winner, loser) pairs; a tie (i, j) counts as one win each way (half a win for
    each side, doubled). `alpha` is a small L2 regularisation so items that never lose or never
    win stay finite. θ is centred to mean 0.
    """
    import choix

    data = list(wins) + [p for i, j in ties for p in ((i, j), (j, i))]
    if not data:
        return [0.0] * n_items
    theta = choix.ilsr_pairwise(n_items, data, alpha=alpha)
    return [float(t) for t in theta - theta.mean()]


def plackett_luce(n_items: int, rankings: Sequence[Sequence[int]], alpha: float = 0.01) -> list[float]:
    """Plackett–Luce log-strengths from full rankings (item ids best first), by choix's I-LSR."""
    import choix

    if not rankings:
        return [0.0] * n_items
    theta = choix.ilsr_rankings(n_items, [list(r) for r in rankings], alpha=alpha)
    return [float(t) for t in theta - theta.mean()]


def majority(labels: Sequence[Hashable]) -> tuple[Hashable | None, float]:
    """Most frequent label and its share; None when the top two are tied."""
    if not labels:
        return None, 0.0
    counts = Counter(labels).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None, counts[0][1] / len(labels)
    return counts[0][0], counts[0][1] / len(labels)
