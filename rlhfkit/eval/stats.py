"""Statistics of evaluation: win rates with intervals, Bradley–Terry scores, distinct-n,
length-matched win rates and Gao et al.'s over-optimisation fits. Pure numpy/scipy.

A *comparison score* s ∈ [0, 1] is what one judged comparison of model A against model B gives A:
1 = win, 0 = loss, ½ = tie, and any value in between for a probabilistic judge or for the average
of the two presentation orders (`judge_both_orders`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import optimize, special, stats

from rlhfkit.algos.calibration import wilson_interval_with_ties

DEFAULT_CONFIDENCE = 0.95
TIE_TOLERANCE = 1e-9
"""A score within this of ½ counts as a tie (averaging two orders, ½(0.9 + 1 − 0.9), is not
exactly ½ in floating point)."""
LOGISTIC_RIDGE = 1e-6
"""L2 penalty on the logistic-regression coefficients: keeps them finite when length perfectly
separates wins from losses, and is too small to move a fit that has a finite optimum."""


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def _scores(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=float).ravel()
    if s.size == 0:
        raise ValueError("no comparisons to compute a win rate from")
    if np.any((s < 0) | (s > 1)) or not np.all(np.isfinite(s)):
        raise ValueError("comparison scores must lie in [0, 1] (1 = win, 0.5 = tie, 0 = loss)")
    return s


@dataclass(frozen=True)
class WinRate:
    """A win rate with its interval and the outcome counts behind it."""

    win_rate: float
    """Mean comparison score (ties count ½)."""
    low: float
    """Lower end of the interval."""
    high: float
    """Upper end of the interval."""
    n: int
    """Number of comparisons."""
    wins: int
    """Comparisons with score > ½."""
    ties: int
    """Comparisons with score ½ (within `TIE_TOLERANCE`)."""
    losses: int
    """Comparisons with score < ½."""
    confidence: float
    """Coverage of the interval (0.95 = 95 %)."""
    method: str = "wilson-ties"
    """How the interval was computed (see `win_rate`)."""

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate(scores: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> WinRate:
    """Win rate of A over B from per-comparison scores (1 win, ½ tie, 0 loss, or fractional), with
    the tie-aware Wilson interval of `wilson_interval_with_ties` (plain Wilson when there are no ties)."""
    s = _scores(scores)
    n = s.size
    p_hat = float(s.mean())
    tie_mass = float(np.mean(s * (1 - s)))
    low, high = wilson_interval_with_ties(p_hat, tie_mass, n, _z(confidence))
    wins, losses = int(np.sum(s > 0.5 + TIE_TOLERANCE)), int(np.sum(s < 0.5 - TIE_TOLERANCE))
    return WinRate(p_hat, low, high, n, wins, n - wins - losses, losses, confidence)


def bradley_terry(wins: np.ndarray, l2: float = 0.0) -> np.ndarray:
    """Bradley–Terry log-strengths θ (mean 0) from a matrix of (possibly fractional) wins.

    `wins[i, j]` = total score of model i in its comparisons against model j (a tie adds ½ to both
    [i, j] and [j, i]). Maximises Σ_{i≠j} wins[i, j] · log σ(θ_i − θ_j) − (l2/2)·|θ|², so
    P(i beats j) = σ(θ_i − θ_j) (Bradley & Terry 1952). With l2 = 0 the MLE exists only when the
    comparison graph is strongly connected (no model that never loses); pass l2 > 0 otherwise.
    Shapes: (M, M) → (M,).
    """
    w = np.asarray(wins, dtype=float)
    m = w.shape[0]
    if w.shape != (m, m) or m < 2:
        raise ValueError(f"wins must be a square (M, M) matrix with M ≥ 2, got shape {w.shape}")
    w = w * (1 - np.eye(m))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        diff = theta[:, None] - theta[None, :]
        nll = -np.sum(w * special.log_expit(diff)) + 0.5 * l2 * theta @ theta
        # d/dθ_i of −Σ w_ij log σ(θ_i − θ_j): −Σ_j w_ij σ(θ_j − θ_i) + Σ_j w_ji σ(θ_j − θ_i)
        g = w * special.expit(-diff)
        return nll, -(g.sum(1) - g.sum(0)) + l2 * theta

    result = optimize.minimize(objective, np.zeros(m), jac=True, method="L-BFGS-B",
                               options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10_000})
    theta = result.x
    return theta - theta.mean()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams, pooled over `texts`
    (whitespace words). 0 when the texts contain no n-gram."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class LengthMatchedWinRate:
    """Win rate at zero length difference from a logistic regression of the score on Δlength."""

    win_rate: float
    """σ(a): the fitted win rate of a comparison with equal lengths."""
    low: float
    """Lower end of the interval σ(a − z·se(a))."""
    high: float
    """Upper end of the interval σ(a + z·se(a))."""
    slope: float
    """b: change of the log-odds of winning per unit of length difference."""
    n: int
    """Number of comparisons."""
    confidence: float
    """Coverage of the interval."""

    def to_dict(self) -> dict:
        return asdict(self)


def length_matched_win_rate(scores: Sequence[float], length_diff: Sequence[float],
                            confidence: float = DEFAULT_CONFIDENCE) -> LengthMatchedWinRate:
    """Win rate at matched length: fit P(A wins) = σ(a + b·Δ), Δ = len(A) − len(B), by maximising
    Σ s log σ(a + bΔ) + (1 − s) log σ(−a − bΔ) (fractional scores allowed; tiny ridge, see
    `LOGISTIC_RIDGE`) and report σ(a), the win rate when both responses have the same length
    (Stiennon et al. 2020 App. F control for length the same way). The interval maps a ± z·se(a),
    se from the inverse observed information, through σ. If Δ never varies and is not 0, the
    intercept cannot be separated from the slope and the result is NaN.
    """
    s = _scores(scores)
    delta = np.asarray(length_diff, dtype=float).ravel()
    if delta.shape != s.shape:
        raise ValueError(f"{s.size} scores but {delta.size} length differences")
    if np.ptp(delta) == 0:
        if delta[0] != 0:
            nan = float("nan")
            return LengthMatchedWinRate(nan, nan, nan, nan, s.size, confidence)
        plain = win_rate(s, confidence)
        return LengthMatchedWinRate(plain.win_rate, plain.low, plain.high, 0.0, s.size, confidence)
    x = np.column_stack([np.ones_like(delta), delta])

    def objective(coef: np.ndarray) -> tuple[float, np.ndarray]:
        eta = x @ coef
        nll = -np.sum(s * special.log_expit(eta) + (1 - s) * special.log_expit(-eta))
        return nll + 0.5 * LOGISTIC_RIDGE * coef @ coef, x.T @ (special.expit(eta) - s) + LOGISTIC_RIDGE * coef

    coef = optimize.minimize(objective, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-10}).x
    p = special.expit(x @ coef)
    information = (x * (p * (1 - p))[:, None]).T @ x + LOGISTIC_RIDGE * np.eye(2)
    se = math.sqrt(np.linalg.inv(information)[0, 0])
    z = _z(confidence)
    return LengthMatchedWinRate(float(special.expit(coef[0])), float(special.expit(coef[0] - z * se)),
                                float(special.expit(coef[0] + z * se)), float(coef[1]), s.size, confidence)


GaoForm = Literal["bon", "rl"]


@dataclass(frozen=True)
class GaoFit:
    """A fitted over-optimisation curve R(d), d = √KL (Gao, Schulman & Hilton 2022, §3)."""

    form: GaoForm
    """"bon": R = d(α − βd); "rl": R = d(α − β log d)."""
    alpha: float
    """α of the fitted form."""
    beta: float
    """β of the fitted form."""
    r2: float
    """Coefficient of determination 1 − SS_res / SS_tot (SS_tot about the mean; the forms have no
    intercept, so a poor fit can go below 0)."""
    n: int
    """Number of points fitted."""

    def predict(self, d: np.ndarray | Sequence[float]) -> np.ndarray:
        """R(d) of the fitted form."""
        d = np.asarray(d, dtype=float)
        return d * self.alpha - self.beta * _gao_basis(self.form, d)

    def peak(self) -> tuple[float, float]:
        """(d*, R*) of the fitted curve: bon d* = α/(2β), R* = α²/(4β); rl d* = exp(α/β − 1),
        R* = β d*. Infinite when β ≤ 0 (the curve never turns over)."""
        if self.beta <= 0:
            return math.inf, math.inf
        if self.form == "bon":
            return self.alpha / (2 * self.beta), self.alpha**2 / (4 * self.beta)
        d_star = math.exp(self.alpha / self.beta - 1)
        return d_star, self.beta * d_star

    def to_dict(self) -> dict:
        """Fields plus the peak (`peak_d`, `peak_kl`, `peak_reward`; None when the curve never turns over)."""
        d_star, r_star = self.peak()
        if not math.isfinite(d_star):
            return {**asdict(self), "peak_d": None, "peak_reward": None, "peak_kl": None}
        return {**asdict(self), "peak_d": d_star, "peak_reward": r_star, "peak_kl": d_star**2}


def _gao_basis(form: GaoForm, d: np.ndarray) -> np.ndarray:
    """The β column: d² (bon) or d·log d with 0·log 0 := 0 (rl)."""
    if form == "bon":
        return d * d
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def _fit_gao(form: GaoForm, d: Sequence[float], r: Sequence[float]) -> GaoFit:
    d = np.asarray(d, dtype=float).ravel()
    r = np.asarray(r, dtype=float).ravel()
    if d.shape != r.shape or d.size < 2:
        raise ValueError(f"need ≥ 2 aligned (d, R) points, got {d.size} and {r.size}")
    if np.any(d < 0):
        raise ValueError("d = √KL must be ≥ 0")
    # R = α·d − β·basis(d) is linear in (α, β): ordinary least squares on the two columns.
    design = np.column_stack([d, -_gao_basis(form, d)])
    (alpha, beta), *_ = np.linalg.lstsq(design, r, rcond=None)
    resid = r - design @ np.array([alpha, beta])
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    return GaoFit(form, float(alpha), float(beta), r2, d.size)


def fit_bon(d: Sequence[float], r: Sequence[float]) -> GaoFit:
    """Fit Gao's best-of-n form R(d) = d(α − βd) by least squares; d = √KL, R(0) = 0 (centre the
    scores on the initial policy first)."""
    return _fit_gao("bon", d, r)


def fit_rl(d: Sequence[float], r: Sequence[float]) -> GaoFit:
    """Fit Gao's RL form R(d) = d(α − β log d) by least squares; d = √KL, R(0) = 0."""
    return _fit_gao("rl", d, r)
