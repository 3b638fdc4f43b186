"""KL estimators (Schulman's table, gradient placement) and the KL controllers."""

import math

import pytest
import torch

from rlhfkit.algos.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
)

N_SAMPLES = 64_000_000
"""Enough for §4's ±1% on k1's bias at KL = 0.005: its standard error is 20/√N = 0.25% there."""
CHUNK = 4_000_000


def _bias_and_std(mu: float) -> dict[str, tuple[float, float]]:
    """x ~ q = N(0, 1) (the policy); p = N(mu, 1) (the reference); true KL(q‖p) = mu²/2. Returns
    each estimator's (mean − KL) / KL and std / KL over N_SAMPLES draws, accumulated in chunks."""
    gen = torch.Generator().manual_seed(1234)
    const = 0.5 * math.log(2 * math.pi)
    sums = {name: [0.0, 0.0] for name in KL_ESTIMATORS}
    for _ in range(N_SAMPLES // CHUNK):
        x = torch.randn(CHUNK, generator=gen, dtype=torch.float64)
        logprobs, ref_logprobs = -0.5 * x**2 - const, -0.5 * (x - mu) ** 2 - const
        for name, acc in sums.items():
            est = kl_penalty(logprobs, ref_logprobs, name)
            acc[0] += est.sum().item()
            acc[1] += est.square().sum().item()
    true_kl = mu**2 / 2
    out = {}
    for name, (total, total_sq) in sums.items():
        mean = total / N_SAMPLES
        out[name] = ((mean - true_kl) / true_kl, math.sqrt(total_sq / N_SAMPLES - mean**2) / true_kl)
    return out


# rlhf-details §4 item 1 (Schulman 2020, re-derived with 2e7 samples):
# (mu, estimator) -> (bias / true KL, std / true KL)
SCHULMAN_TABLE = {
    (0.1, "k1"): (0.0, 20.0), (0.1, "k2"): (0.002, 1.42), (0.1, "k3"): (0.0, 1.42),
    (1.0, "k1"): (0.0, 2.0), (1.0, "k2"): (0.25, 1.73), (1.0, "k3"): (0.0, 1.70),
}


@pytest.mark.parametrize("mu", [0.1, 1.0])
def test_schulman_bias_and_std_table(mu):
    for name, (bias, std) in _bias_and_std(mu).items():
        want_bias, want_std = SCHULMAN_TABLE[(mu, name)]
        # k2 (biased): ±0.01 of the table; k1 and k3 (unbiased): |bias| < 1%; std: ±2% (§4).
        assert bias == pytest.approx(want_bias, abs=0.01), (mu, name, bias)
        assert std == pytest.approx(want_std, rel=0.02), (mu, name, std)


def test_estimators_by_hand():
    logprobs = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64)
    d = [0.5, -1.0, 0.0]  # logπ − logπ_ref
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor(d, dtype=torch.float64))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), torch.tensor([0.125, 0.5, 0.0], dtype=torch.float64))
    k3 = [math.exp(-v) - 1 + v for v in d]  # r = exp(−d), k3 = r − 1 − log r
    expected_k3 = torch.tensor(k3, dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), expected_k3, rtol=1e-14, atol=0)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logprobs, ref, "k4")


def test_k3_is_accurate_for_tiny_log_ratios():
    # Near r = 1 the terms of (r − 1) − log r cancel; expm1 keeps ~15 digits of the δ²/2 result.
    delta = 1e-6
    out = kl_penalty(torch.tensor([delta], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64), "k3")
    series = delta**2 / 2 - delta**3 / 6 + delta**4 / 24  # e^{−δ} − 1 + δ
    assert out.item() == pytest.approx(series, rel=1e-8)


def _categorical_setup():
    gen = torch.Generator().manual_seed(7)
    theta = torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_()
    ref_logprobs = torch.log_softmax(torch.randn(6, generator=gen, dtype=torch.float64), -1)
    return theta, ref_logprobs


def _grad(loss_fn):
    theta, ref = _categorical_setup()
    logprobs = torch.log_softmax(theta, -1)
    # On-policy: the sampling distribution is the current policy, held constant.
    pi_old = logprobs.detach().exp()
    (grad,) = torch.autograd.grad(loss_fn(logprobs, ref, pi_old), theta)
    return grad


def test_k2_loss_gradient_equals_k1_in_reward_and_k3_loss_does_not():
    # Exact expectations by enumerating the 6 actions: no sampling noise.
    reinforce_k1 = _grad(lambda lp, ref, w: (w * lp * kl_penalty(lp, ref, "k1").detach()).sum())
    k2_loss = _grad(lambda lp, ref, w: (w * kl_penalty(lp, ref, "k2")).sum())
    k3_loss = _grad(lambda lp, ref, w: (w * kl_penalty(lp, ref, "k3")).sum())
    k1_loss = _grad(lambda lp, ref, w: (w * kl_penalty(lp, ref, "k1")).sum())
    reverse_kl = _grad(lambda lp, ref, w: (lp.exp() * (lp - ref)).sum())
    forward_kl = _grad(lambda lp, ref, w: (ref.exp() * (ref - lp)).sum())

    torch.testing.assert_close(reinforce_k1, reverse_kl, rtol=1e-10, atol=1e-12)  # REINFORCE is ∇KL(π‖π_ref)
    torch.testing.assert_close(k2_loss, reinforce_k1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(k3_loss, forward_kl, rtol=1e-10, atol=1e-12)  # k3 as loss: ∇KL(π_ref‖π)
    assert (k3_loss - reinforce_k1).norm() > 0.1 * reinforce_k1.norm()
    # k1 as a loss has zero expected gradient on-policy (score-function identity E_π[∇logπ] = 0).
    torch.testing.assert_close(k1_loss, torch.zeros_like(k1_loss), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kl", "factor"), [(9.0, 1.01024), (6.6, 1.00512), (0.0, 0.98976), (6.0, 1.0)])
def test_adaptive_controller_numbers(kl, factor):
    ctl = AdaptiveKLController(init_kl_coef=0.15, target=6.0, horizon=10_000)
    ctl.update(kl, n_steps=512)
    assert ctl.value == pytest.approx(0.15 * factor, rel=1e-12)


def test_adaptive_controller_state_round_trip_and_compounding():
    ctl = AdaptiveKLController(0.15, 6.0, 10_000)
    ctl.update(9.0, 512)
    resumed = AdaptiveKLController(0.15, 6.0, 10_000)
    resumed.load_state_dict(ctl.state_dict())
    ctl.update(0.0, 512)
    resumed.update(0.0, 512)
    assert resumed.value == ctl.value == pytest.approx(0.15 * 1.01024 * 0.98976, rel=1e-12)
    # §4 item 2 prints "0.15 × 1.01024 = 0.153536"; the product is 0.151536 (a typo in the note).
    first = AdaptiveKLController(0.15, 6.0, 10_000)
    first.update(9.0, 512)
    assert first.value == pytest.approx(0.151536, rel=1e-12)


def test_fixed_controller_and_validation():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 512)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        FixedKLController(-1.0)
