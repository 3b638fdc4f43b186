"""Best-of-n: the analytic KL table and the unbiased estimator against brute-force enumeration."""

import itertools
import math

import pytest
import torch

from rlhfkit.algos.bon import best_of_n_kl, best_of_n_unbiased, best_of_n_weights


@pytest.mark.parametrize(("n", "quoted"), [(1, 0.0), (4, 0.64), (16, 1.83), (64, 3.17), (1000, 5.91), (12_500, 8.43)])
def test_best_of_n_kl_table(n, quoted):
    # Quoted to 2 decimals in rlhf-details §2.1, one of them truncated (n = 16: 1.8351 printed 1.83).
    assert best_of_n_kl(n) == pytest.approx(quoted, abs=0.0051)
    assert best_of_n_kl(n) == pytest.approx(math.log(n) - (n - 1) / n, rel=1e-15)


def _brute_force(proxy, gold, n):
    values = [gold[max(subset, key=lambda i: proxy[i])] for subset in itertools.combinations(range(len(proxy)), n)]
    return sum(values) / len(values)


def test_unbiased_estimator_matches_enumeration_of_all_subsets():
    gen = torch.Generator().manual_seed(3)
    proxy = torch.randn(2, 9, generator=gen, dtype=torch.float64)  # two prompts, N = 9
    gold = torch.randn(2, 9, generator=gen, dtype=torch.float64)
    for n in range(1, 10):
        est = best_of_n_unbiased(proxy, gold, n)
        for p in range(2):
            expected = _brute_force(proxy[p].tolist(), gold[p].tolist(), n)
            assert est[p].item() == pytest.approx(expected, rel=1e-10, abs=1e-12), n
    # n = 1 is the plain mean; n = N is the gold score of the proxy-best sample.
    assert best_of_n_unbiased(proxy[0], gold[0], 1).item() == pytest.approx(gold[0].mean().item(), rel=1e-12)
    best = gold[0, proxy[0].argmax()].item()
    assert best_of_n_unbiased(proxy[0], gold[0], 9).item() == pytest.approx(best, rel=1e-12)


def test_weights_sum_to_one_for_large_n():
    w = best_of_n_weights(20_000, 500)
    assert w.sum().item() == pytest.approx(1.0, rel=1e-9)
    assert torch.isfinite(w).all() and w[:499].eq(0).all()
    with pytest.raises(ValueError):
        best_of_n_weights(5, 6)
