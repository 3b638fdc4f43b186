"""PPO policy/value losses, by hand and against REINFORCE."""

import math

import pytest
import torch

from rlhfkit.algos.ppo_losses import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_bonus,
    explained_variance,
    kl_loss,
)

F64 = torch.float64
QUOTED_4DP = 5e-5  # the RLOO blog quotes the gradient to 4 decimals


def test_reinforce_equals_ppo_at_ratio_one():
    # RLOO blog: logits [1, 2, 1, 1], action 1, A = 1 → objective gradient [−0.1749, 0.5246, −0.1749, −0.1749].
    theta = torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=F64, requires_grad=True)
    logprob = torch.log_softmax(theta, -1)[1].reshape(1, 1)
    loss, stats = clipped_policy_loss(logprob, logprob.detach(), torch.ones(1, 1, dtype=F64),
                                      torch.ones(1, 1, dtype=torch.bool), clip_eps=0.2)
    (ppo_grad,) = torch.autograd.grad(loss, theta)
    quoted = torch.tensor([-0.1749, 0.5246, -0.1749, -0.1749], dtype=F64)
    torch.testing.assert_close(-ppo_grad, quoted, atol=QUOTED_4DP, rtol=0)
    # Exactly REINFORCE: ∇(−A logπ(a)) = softmax(θ) − onehot(a).
    exact = torch.softmax(theta.detach(), -1) - torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(ppo_grad, exact, rtol=1e-12, atol=1e-12)
    assert stats.ratio_mean.item() == 1.0 and stats.clipfrac.item() == 0.0 and stats.approx_kl.item() == 0.0


def test_clipping_cases_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5]], dtype=F64)
    old = torch.tensor([[-1.0, -2.0, -0.3, -4.0]], dtype=F64)
    logprobs = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([[2.0, 2.0, -2.0, -2.0]], dtype=F64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, stats = clipped_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    # per token: max(−Aρ, −A clip(ρ)) = max(−3, −2.4), max(−1, −1.6), max(3, 2.4), max(1, 1.6)
    assert loss.item() == pytest.approx((-2.4 - 1.0 + 3.0 + 1.6) / 4, rel=1e-12)
    loss.backward()
    # Clipped tokens get no gradient; unclipped ones get −A ρ / 4 with respect to logπ.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.25, 0.75, 0.0]], dtype=F64))
    assert stats.clipfrac.item() == pytest.approx(0.5, rel=1e-12)
    assert stats.ratio_mean.item() == pytest.approx(1.0, rel=1e-12)
    assert stats.ratio_max.item() == pytest.approx(1.5, rel=1e-12)
    assert stats.ratio_min.item() == pytest.approx(0.5, rel=1e-12)
    l15, l05 = math.log(1.5), math.log(0.5)
    assert stats.approx_kl.item() == pytest.approx(0.5 * (l15**2 + l05**2) / 2, rel=1e-12)
    assert stats.approx_kl_k3.item() == pytest.approx(((0.5 - l15) + (-0.5 - l05)) / 2, rel=1e-12)
    assert not stats.clipfrac.requires_grad


def test_policy_loss_garbage_at_padding_and_aggregation():
    old = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]], dtype=F64)
    lp_values = torch.tensor([[-0.9, -2.2, float("nan")], [-1.3, float("inf"), 1.0]], dtype=F64)
    adv = torch.tensor([[1.0, -1.0, float("nan")], [0.5, 3.0, 1e30]], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logprobs = lp_values.clone().requires_grad_()
    loss, stats = clipped_policy_loss(logprobs, old, adv, mask, 0.2, agg_mode="seq_mean_token_mean")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert torch.equal(logprobs.grad[~mask], torch.zeros(3, dtype=F64))
    # Same loss from the clean per-token values: ρ = e^{0.1}, e^{−0.2} (row 0), e^{−0.3} (row 1).
    rho = [math.exp(0.1), math.exp(-0.2), math.exp(-0.3)]
    row0 = (max(-rho[0], -min(rho[0], 1.2)) + max(rho[1], max(rho[1], 0.8))) / 2
    row1 = max(-0.5 * rho[2], -0.5 * max(rho[2], 0.8))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-12)
    assert stats.ratio_max.item() == pytest.approx(rho[0], rel=1e-12)


def test_value_loss_clip_on_and_off():
    values = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.0]], dtype=F64)
    returns = torch.tensor([[0.0, 2.0, 0.5]], dtype=F64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, value_clip_eps=0.2)
    # V_clip = [0.7, 0.7, 0]; squared errors unclipped [1, 1, .25], clipped [.49, 1.69, .25]
    assert loss.item() == pytest.approx(0.5 * (1.0 + 1.69 + 0.25) / 3, rel=1e-12)
    assert clipfrac.item() == pytest.approx(1 / 3, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, values)
    torch.testing.assert_close(grad, torch.tensor([[1 / 3, 0.0, -1 / 6]], dtype=F64))

    loss_off, clipfrac_off = clipped_value_loss(values, old, returns, mask, value_clip_eps=None)
    assert loss_off.item() == pytest.approx(0.5 * (1.0 + 1.0 + 0.25) / 3, rel=1e-12)
    assert clipfrac_off.item() == 0.0
    (grad_off,) = torch.autograd.grad(loss_off, values)
    torch.testing.assert_close(grad_off, torch.tensor([[1 / 3, -1 / 3, -1 / 6]], dtype=F64))


def test_value_loss_ignores_padding():
    values = torch.tensor([[1.0, float("nan")]], dtype=F64, requires_grad=True)
    loss, _ = clipped_value_loss(values, torch.tensor([[1.0, float("nan")]], dtype=F64),
                                 torch.tensor([[3.0, float("inf")]], dtype=F64), torch.tensor([[True, False]]), 0.2)
    loss.backward()
    # Only the real token counts: V = V_old = 1, R = 3 → ½·(1 − 3)².
    assert loss.item() == pytest.approx(0.5 * 4.0, rel=1e-12)
    assert torch.equal(values.grad, torch.tensor([[-2.0, 0.0]], dtype=F64))


def test_kl_loss_and_entropy_bonus():
    logprobs = torch.tensor([[-1.0, -2.0, 5.0]], dtype=F64)
    ref = torch.tensor([[-2.0, -1.0, -5.0]], dtype=F64)
    mask = torch.tensor([[True, True, False]])
    k3 = ((math.exp(-1) - 1 + 1) + (math.exp(1) - 1 - 1)) / 2  # log r = −1, +1
    assert kl_loss(logprobs, ref, mask).item() == pytest.approx(k3, rel=1e-12)
    assert kl_loss(logprobs, ref, mask, estimator="k1").item() == pytest.approx(0.0, abs=1e-12)
    ent = torch.tensor([[2.0, 1.0, 100.0], [4.0, 0.0, 0.0]], dtype=F64)
    emask = torch.tensor([[True, True, False], [True, False, False]])
    assert entropy_bonus(ent, emask).item() == pytest.approx(7 / 3, rel=1e-12)
    assert entropy_bonus(ent, emask, "seq_mean_token_mean").item() == pytest.approx(2.75, rel=1e-12)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]], dtype=F64)
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, -99.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, True, False]])
    # Var R = 1.25, Var(R − V) = Var([0, 0, 0, −1]) = 0.1875
    assert explained_variance(values, returns, mask).item() == pytest.approx(1 - 0.1875 / 1.25, rel=1e-12)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0, rel=1e-12)
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask).item())
