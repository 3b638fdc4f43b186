"""GAE against a slow loop and the closed form; critic-free estimators by hand; the registry."""

import pytest
import torch

from rlhfkit.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    discounted_returns,
    gae,
    get_estimator,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)

F64 = torch.float64


def _batch(seed=0, b=4, t=7):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(b, t, generator=gen, dtype=F64)
    values = torch.randn(b, t, generator=gen, dtype=F64)
    lengths = [7, 4, 1, 0][:b]
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return rewards, values, mask, lengths


def _slow_gae(rewards, values, lengths, gamma, lam):
    """Plain-Python GAE on each row's first `length` tokens, zero bootstrap at the end."""
    out = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        r, v = rewards[b, :length].tolist(), values[b, :length].tolist()
        running = 0.0
        for t in reversed(range(length)):
            next_v = v[t + 1] if t + 1 < length else 0.0
            running = r[t] + gamma * next_v - v[t] + gamma * lam * running
            out[b, t] = running
    return out


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_slow_loop(gamma, lam):
    rewards, values, mask, lengths = _batch()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = _slow_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ret, torch.where(mask, expected + values, 0.0), rtol=1e-12, atol=1e-12)


def test_gae_closed_form_gamma_1_lambda_095():
    # A_t = Σ_{l≥0} λ^l δ_{t+l},  δ_t = r_t + V_{t+1} − V_t,  V_L = 0   (γ = 1), as a matrix product.
    rewards, values, _, _ = _batch(seed=3, b=1, t=6)
    lam, length = 0.95, 6
    next_v = torch.cat([values[0, 1:], torch.zeros(1, dtype=F64)])
    delta = rewards[0] + next_v - values[0]
    powers = torch.tensor(
        [[lam ** (s - t) if s >= t else 0.0 for s in range(length)] for t in range(length)], dtype=F64
    )
    adv, _ = gae(rewards, values, torch.ones(1, length, dtype=torch.bool), 1.0, lam)
    torch.testing.assert_close(adv[0], powers @ delta, rtol=1e-12, atol=1e-12)


def test_gae_lambda_1_gamma_1_is_reward_to_go_minus_value():
    rewards, values, mask, lengths = _batch()
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    for b, length in enumerate(lengths):
        for t in range(length):
            assert adv[b, t].item() == pytest.approx(rewards[b, t:length].sum().item() - values[b, t].item(), abs=1e-12)


def test_gae_garbage_in_masked_positions_changes_nothing():
    rewards, values, mask, _ = _batch()
    adv, ret = gae(rewards, values, mask, 1.0, 0.95)
    noisy_r = torch.where(mask, rewards, torch.tensor(float("nan"), dtype=F64))
    noisy_v = torch.where(mask, values, torch.tensor(1e30, dtype=F64))
    adv2, ret2 = gae(noisy_r, noisy_v, mask, 1.0, 0.95)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    assert torch.equal(adv[~mask], torch.zeros_like(adv[~mask]))


def test_gae_skips_holes_in_the_mask():
    # A row with a masked hole equals the same row with the hole removed.
    rewards, values, _, _ = _batch(seed=5, b=1, t=6)
    mask = torch.tensor([[True, True, False, False, True, True]])
    keep = mask[0]
    adv, _ = gae(rewards, values, mask, 0.9, 0.7)
    compact, _ = gae(rewards[:, keep], values[:, keep], torch.ones(1, 4, dtype=torch.bool), 0.9, 0.7)
    torch.testing.assert_close(adv[:, keep], compact, rtol=1e-12, atol=1e-12)


def test_discounted_returns():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 99.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False]])
    expected = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]], dtype=F64)
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.5), expected, rtol=1e-12, atol=0)


GROUPS = torch.tensor([0, 0, 0, 0, 7, 7])
SCORES = torch.tensor([1.0, 2.0, 5.0, 8.0, 3.0, -1.0], dtype=F64)
FULL = torch.ones(6, 3, dtype=torch.bool)


def test_rloo_worked_example():
    adv = rloo_advantages(SCORES, GROUPS, FULL)
    expected = [1 - 5, 2 - 14 / 3, 5 - 11 / 3, 8 - 8 / 3, 3 - (-1), -1 - 3]
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    assert torch.equal(adv[:, 0:1].expand(6, 3), adv)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(SCORES, torch.tensor([0, 0, 0, 0, 1, 2]), FULL)


def test_rloo_is_g_over_g_minus_1_times_dr_grpo():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(12, generator=gen, dtype=F64)
    groups = torch.tensor([3] * 5 + [1] * 4 + [2] * 3)
    mask = torch.ones(12, 2, dtype=torch.bool)
    dr = grpo_advantages(scores, groups, mask, scale_by_std=False)
    factor = torch.tensor([5 / 4] * 5 + [4 / 3] * 4 + [3 / 2] * 3, dtype=F64).unsqueeze(-1)
    torch.testing.assert_close(rloo_advantages(scores, groups, mask), factor * dr, rtol=1e-12, atol=1e-12)


def test_grpo_by_hand():
    adv = grpo_advantages(SCORES, GROUPS, FULL, eps=0.0)
    # group 0: mean 4, unbiased std sqrt((9 + 4 + 1 + 16)/3) = sqrt(10); group 7: mean 1, std sqrt(8)
    expected = [(1 - 4) / 10**0.5, (2 - 4) / 10**0.5, 1 / 10**0.5, 4 / 10**0.5, 2 / 8**0.5, -2 / 8**0.5]
    torch.testing.assert_close(adv[:, 1], torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    dr = grpo_advantages(SCORES, GROUPS, FULL, scale_by_std=False)
    torch.testing.assert_close(dr[:, 2], torch.tensor([-3.0, -2.0, 1.0, 4.0, 2.0, -2.0], dtype=F64))
    single = grpo_advantages(torch.tensor([3.0], dtype=F64), torch.tensor([0]), torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(single, torch.zeros(1, 2, dtype=F64))


def test_group_ids_need_not_be_contiguous_and_masks_zero_out():
    perm = torch.tensor([4, 0, 2, 5, 1, 3])
    mask = torch.tensor([[1, 1, 0]] * 6).bool()
    adv = grpo_advantages(SCORES[perm], GROUPS[perm], mask)
    reference = grpo_advantages(SCORES, GROUPS, mask)[perm]
    torch.testing.assert_close(adv, reference, rtol=1e-12, atol=1e-12)
    assert torch.equal(adv[:, 2], torch.zeros(6, dtype=F64))


def _whiten_slow(values):
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return [(v - mean) / (var + 1e-8) ** 0.5 for v in values]


def test_reinforce_pp_scores_only_is_token_level_batch_whitening():
    scores = torch.tensor([1.0, 3.0], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    adv = reinforce_pp_advantages(scores, mask)
    # Tokens: three copies of 1.0 and one 3.0 are whitened together.
    expected = _whiten_slow([1.0, 1.0, 1.0, 3.0])
    torch.testing.assert_close(adv[mask], torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12)
    baseline = reinforce_pp_advantages(torch.tensor([1.0, 3.0, 10.0, 14.0], dtype=F64),
                                       torch.ones(4, 1, dtype=torch.bool), group_ids=torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(baseline[:, 0], torch.tensor(_whiten_slow([-1.0, 1.0, -2.0, 2.0]), dtype=F64))


def test_reinforce_pp_with_per_token_kl_rewards():
    # rewards = −β·kl per token plus the score on the last token (as per_token_rewards builds them).
    scores = torch.tensor([2.0, 4.0], dtype=F64)
    rewards = torch.tensor([[-0.1, -0.2, 2.0 - 0.3], [4.0 - 0.5, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    groups = torch.tensor([0, 0])  # group mean 3
    adv = reinforce_pp_advantages(scores, mask, groups, rewards=rewards)
    # Reward-to-go with the baseline taken off the score: row 0: −1 −0.6, −1 −0.5, −1 −0.3; row 1: 1 − 0.5.
    expected = _whiten_slow([-1.6, -1.5, -1.3, 0.5])
    torch.testing.assert_close(adv[mask], torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12)


def test_registry_calling_convention():
    assert set(ADVANTAGE_ESTIMATORS) == {"gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    assert get_estimator("gae").needs_values and not get_estimator("gae").needs_groups
    assert [n for n, s in ADVANTAGE_ESTIMATORS.items() if s.needs_groups] == [
        "grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"]
    with pytest.raises(ValueError, match="gae, grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline"):
        get_estimator("ppo")

    scores = torch.tensor([1.0, 2.0, 5.0, 8.0], dtype=F64)
    groups = torch.tensor([0, 0, 0, 0])
    mask = torch.tensor([[1, 1, 0]] * 4).bool()
    kl = torch.tensor([[0.1, 0.2, 0.0]] * 4, dtype=F64)
    rewards = -0.5 * kl + torch.tensor([[0.0, 1.0, 0.0]], dtype=F64) * scores.unsqueeze(-1)
    values = torch.zeros(4, 3, dtype=F64)
    common = dict(scores=scores, values=values, response_mask=mask, group_ids=groups, gamma=1.0, gae_lambda=0.95)
    for name, spec in ADVANTAGE_ESTIMATORS.items():
        adv, ret = spec.fn(rewards=rewards, **common)
        assert adv.shape == (4, 3) and (ret is not None) == spec.needs_values, name
        assert torch.equal(adv[:, 2], torch.zeros(4, dtype=F64)), name
    # KL in the reward reaches RLOO through the sequence reward score − β Σ kl (the same shift for all here).
    adv, _ = get_estimator("rloo").fn(rewards=rewards, **common)
    torch.testing.assert_close(adv, rloo_advantages(scores - 0.15, groups, mask), rtol=1e-12, atol=1e-12)
    adv, _ = get_estimator("dr_grpo").fn(rewards=None, **common)
    torch.testing.assert_close(adv, grpo_advantages(scores, groups, mask, scale_by_std=False))
    with pytest.raises(ValueError, match="group_ids"):
        get_estimator("grpo").fn(rewards=None, **{**common, "group_ids": None})
    with pytest.raises(ValueError, match="values"):
        get_estimator("gae").fn(rewards=rewards, **{**common, "values": None})
