"""Best-of-n sampling: its analytic KL and the unbiased estimate of its expected gold score.

Best-of-n is the training-free baseline of Gao et al. 2022 (§2.1): draw n responses, keep the one
the proxy RM likes best, and plot the gold score against d = √KL.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ base) = log n − (n − 1)/n nats: exact when proxy scores never tie, an upper
    bound otherwise (Beirami et al. 2024). n = 4 → 0.64, 16 → 1.83, 64 → 3.17, 1000 → 5.91.
    Source: Stiennon et al. 2020 App. G.3; Gao et al. 2022 §2."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_weights(num_samples: int, n: int) -> Tensor:
    """(N,) float64 weights w_i = C(i − 1, n − 1) / C(N, n) for the i-th smallest proxy score
    (i = 1…N; 0 for i < n): the probability that sample i is the proxy-best of a uniformly random
    n-subset of the N samples. They sum to 1 (hockey-stick identity). Computed with log-gamma so
    N in the tens of thousands does not overflow."""
    if not 1 <= n <= num_samples:
        raise ValueError(f"need 1 <= n <= N, got n={n}, N={num_samples}")
    i = torch.arange(1, num_samples + 1, dtype=torch.float64)
    log_choose_i = torch.lgamma(i) - math.lgamma(n) - torch.lgamma((i - n + 1).clamp(min=1))
    log_choose_total = math.lgamma(num_samples + 1) - math.lgamma(n + 1) - math.lgamma(num_samples - n + 1)
    return torch.where(i >= n, torch.exp(log_choose_i - log_choose_total), 0.0)


def best_of_n_unbiased(proxy: Tensor, gold: Tensor, n: int) -> Tensor:
    """Unbiased estimate of E[gold(best-of-n by proxy)] from N ≥ n samples of one prompt.

    Sort the N samples by proxy score; with S_(i) the i-th smallest,
    estimate = Σ_{i=n}^{N} C(i − 1, n − 1) / C(N, n) · gold(S_(i)),
    i.e. the exact average over all C(N, n) subsets of the gold score of each subset's proxy-best.
    Proxy ties are broken by position (stable sort: the later sample counts as larger).

    Shapes: `proxy`, `gold` (..., N) → (...) float64, one estimate per leading index (prompt).
    Source: Nakano et al. 2021 (WebGPT) App.; Gao et al. 2022 §2.
    """
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold shapes differ: {tuple(proxy.shape)} vs {tuple(gold.shape)}")
    order = torch.sort(proxy.detach(), dim=-1, stable=True).indices
    gold_sorted = torch.gather(gold.detach().double(), -1, order)
    return (gold_sorted * best_of_n_weights(proxy.shape[-1], n).to(gold_sorted.device)).sum(-1)
