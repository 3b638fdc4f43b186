"""Per-token rewards, EOS penalty, clipping and reward normalisation."""

import pytest
import torch

from rlhfkit.algos.rewards import apply_missing_eos_penalty, clip_rewards, per_token_rewards, reward_normalization

F64 = torch.float64


def test_per_token_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0, 5.0], dtype=F64)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, 9.0], [-1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, 7.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]).bool()
    rewards, kl = per_token_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    expected_kl = torch.tensor([[0.5, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4], dtype=F64)
    expected_rewards = torch.tensor(
        [[-0.05, 0.1, 0.0 + 2.0, 0.0], [-0.1 - 1.0, 0.0, 0.0, 0.0], [0.0] * 4], dtype=F64
    )
    torch.testing.assert_close(kl, expected_kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rewards, expected_rewards, rtol=1e-12, atol=1e-12)


def test_per_token_rewards_estimator_and_garbage_at_padding():
    scores = torch.tensor([1.0], dtype=F64)
    logprobs = torch.tensor([[-1.0, float("nan"), 1.0]], dtype=F64)
    ref = torch.tensor([[-2.0, float("inf"), -1000.0]], dtype=F64)
    mask = torch.tensor([[True, False, False]])
    rewards, kl = per_token_rewards(scores, logprobs, ref, mask, kl_coef=0.5, estimator="k3")
    k3 = torch.exp(torch.tensor(-1.0, dtype=F64)) - 1 + 1  # log r = −1: e^{−1} − 1 + 1
    torch.testing.assert_close(kl, torch.tensor([[k3.item(), 0.0, 0.0]], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(rewards, torch.tensor([[1.0 - 0.5 * k3.item(), 0.0, 0.0]], dtype=F64))


def test_missing_eos_penalty_modes():
    scores = torch.tensor([0.5, 2.0, -3.0])
    has_eos = torch.tensor([True, False, False])
    assert torch.equal(apply_missing_eos_penalty(scores, has_eos, 1.0), torch.tensor([0.5, 1.0, -4.0]))
    assert torch.equal(apply_missing_eos_penalty(scores, has_eos, 1.0, "replace"), torch.tensor([0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="subtract, replace"):
        apply_missing_eos_penalty(scores, has_eos, 1.0, "zero")
    with pytest.raises(ValueError):
        apply_missing_eos_penalty(scores, has_eos, -1.0)


def test_clip_rewards():
    assert torch.equal(clip_rewards(torch.tensor([-7.0, 0.3, 9.0]), 5.0), torch.tensor([-5.0, 0.3, 5.0]))


def test_reward_normalization_gain_and_bias():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=F64)
    gain, bias = reward_normalization(scores)
    # mean 3, biased var (4 + 1 + 0 + 9)/4 = 3.5
    assert gain == pytest.approx(1 / 3.5**0.5, rel=1e-12)
    assert bias == pytest.approx(-3 * gain, rel=1e-12)
    normalised = gain * scores + bias
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert normalised.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-12)
    gain2, bias2 = reward_normalization(scores, target_mean=1.0, target_std=2.0)
    assert gain2 * 3 + bias2 == pytest.approx(1.0, rel=1e-12) and gain2 == pytest.approx(2 * gain, rel=1e-12)
    with pytest.raises(ValueError):
        reward_normalization(torch.ones(4))
