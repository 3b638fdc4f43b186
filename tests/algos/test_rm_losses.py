"""Reward-model losses against hand values and slow itertools/math references."""

import itertools
import math

import pytest
import torch

from rlhfkit.algos.rm_losses import (
    MARGIN_LARGE,
    bradley_terry_loss,
    centering_loss,
    chosen_lm_loss,
    combine_rewards,
    grouped_pairwise_loss,
    plackett_luce_loss,
    strength_to_margin,
)

F64 = torch.float64


def _softplus(x):  # −log σ(−x), in plain math for the references
    return math.log1p(math.exp(x)) if x < 30 else x


def test_bradley_terry_by_hand_and_extreme_gaps():
    r_c = torch.tensor([2.0, 0.0, -1000.0], dtype=F64, requires_grad=True)
    r_r = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    loss = bradley_terry_loss(r_c, r_r)
    expected = [math.log1p(math.exp(-1.0)), math.log(2.0), 1000.0]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    loss.sum().backward()
    assert torch.isfinite(r_c.grad).all()
    with_margin = bradley_terry_loss(r_c.detach(), r_r, margin=torch.tensor([0.5, 1 / 3, 0.0], dtype=F64))
    assert with_margin[0].item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-12)
    assert with_margin[1].item() == pytest.approx(_softplus(1 / 3), rel=1e-12)


def _ranking_batch():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 5, generator=gen, dtype=F64)
    ranks = torch.tensor([[1, 2, 3, 4, 5], [2, 1, 2, 3, 9], [1, 1, 2, 9, 9], [1, 1, 9, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]).bool()
    margins = torch.rand(4, 5, 5, generator=gen, dtype=F64)
    return rewards, ranks, mask, margins


def _slow_grouped(rewards, ranks, mask, margins):
    out = []
    for b in range(rewards.shape[0]):
        real = [k for k in range(rewards.shape[1]) if mask[b, k]]
        losses = []
        for i, j in itertools.combinations(real, 2):
            if ranks[b, i] == ranks[b, j]:
                continue
            win, lose = (i, j) if ranks[b, i] < ranks[b, j] else (j, i)
            m = 0.0 if margins is None else margins[b, win, lose].item()
            losses.append(_softplus(-(rewards[b, win].item() - rewards[b, lose].item() - m)))
        out.append(sum(losses) / len(losses) if losses else 0.0)
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("use_margins", [False, True])
def test_grouped_pairwise_matches_slow_loop(use_margins):
    rewards, ranks, mask, margins = _ranking_batch()
    margins = margins if use_margins else None
    expected = _slow_grouped(rewards, ranks, mask, margins)
    torch.testing.assert_close(grouped_pairwise_loss(rewards, ranks, mask, margins), expected, rtol=1e-12, atol=1e-12)
    # Full K = 5 strict ranking: C(5, 2) = 10 pairs, so the per-prompt loss is their mean.
    assert expected[3].item() == 0.0  # a single tied pair gives nothing


def test_grouped_pairwise_k2_is_bt_and_ignores_padding_garbage():
    rewards = torch.tensor([[1.5, -0.5, float("nan")]], dtype=F64, requires_grad=True)
    ranks = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[True, True, False]])
    loss = grouped_pairwise_loss(rewards, ranks, mask)
    bt = bradley_terry_loss(torch.tensor([1.5], dtype=F64), torch.tensor([-0.5], dtype=F64))
    torch.testing.assert_close(loss, bt, rtol=1e-12, atol=0)
    loss.sum().backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[0, 2].item() == 0.0


def _slow_pl(rewards, ranks, mask, ties):
    """−Σ_i [r_i − log Σ_{j ∈ D_i} e^{r_j}] with D_i = {i} ∪ worse(i) (incomparable) or not-better(i) (Breslow)."""
    out = []
    for b in range(rewards.shape[0]):
        real = [k for k in range(rewards.shape[1]) if mask[b, k]]
        total = 0.0
        for i in real:
            if ties == "incomparable":
                denom = [j for j in real if j == i or ranks[b, j] > ranks[b, i]]
            else:
                denom = [j for j in real if ranks[b, j] >= ranks[b, i]]
            total += rewards[b, i].item() - math.log(sum(math.exp(rewards[b, j].item()) for j in denom))
        out.append(-total)
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("ties", ["incomparable", "breslow"])
def test_plackett_luce_matches_slow_reference(ties):
    rewards, ranks, mask, _ = _ranking_batch()
    expected = _slow_pl(rewards, ranks, mask, ties)
    torch.testing.assert_close(plackett_luce_loss(rewards, ranks, mask, ties), expected, rtol=1e-12, atol=1e-12)


def test_plackett_luce_strict_ranking_is_the_sequential_choice_likelihood():
    # Items listed best-first: P = Π_k e^{r_k} / Σ_{j ≥ k} e^{r_j}.
    r = [0.3, -1.2, 2.0, 0.5]
    ranks = torch.tensor([[2, 4, 1, 3]])  # order: item 2, item 0, item 3, item 1
    order = [2, 0, 3, 1]
    log_lik = sum(r[order[k]] - math.log(sum(math.exp(r[j]) for j in order[k:])) for k in range(4))
    out = plackett_luce_loss(torch.tensor([r], dtype=F64), ranks, torch.ones(1, 4, dtype=torch.bool))
    assert out.item() == pytest.approx(-log_lik, rel=1e-12)


def test_plackett_luce_k2_equals_bradley_terry_exactly():
    gen = torch.Generator().manual_seed(1)
    rewards = 4 * torch.randn(64, 2, generator=gen, dtype=F64)
    ranks = torch.tensor([[1, 2]]).expand(64, 2)
    mask = torch.ones(64, 2, dtype=torch.bool)
    bt = bradley_terry_loss(rewards[:, 0], rewards[:, 1])
    for ties in ("incomparable", "breslow"):
        torch.testing.assert_close(plackett_luce_loss(rewards, ranks, mask, ties), bt, rtol=1e-12, atol=1e-14)


def test_plackett_luce_ties():
    a, b, c = 0.4, -0.3, 1.1
    rewards = torch.tensor([[a, b, c]], dtype=F64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    lse = lambda *xs: math.log(sum(math.exp(x) for x in xs))  # noqa: E731
    tied_top = torch.tensor([[1, 1, 2]])
    incomparable = -((a - lse(a, c)) + (b - lse(b, c)))
    breslow = -(a + b - 2 * lse(a, b, c))
    assert plackett_luce_loss(rewards, tied_top, mask).item() == pytest.approx(incomparable, rel=1e-12)
    assert plackett_luce_loss(rewards, tied_top, mask, "breslow").item() == pytest.approx(breslow, rel=1e-12)
    # K = 2 tie: nothing under "incomparable"; Breslow's term is 2·log 2 at equal rewards.
    pair = torch.tensor([[0.7, 0.7]], dtype=F64)
    tie2 = torch.tensor([[1, 1]])
    mask2 = torch.ones(1, 2, dtype=torch.bool)
    assert plackett_luce_loss(pair, tie2, mask2).item() == 0.0
    assert plackett_luce_loss(pair, tie2, mask2, "breslow").item() == pytest.approx(2 * math.log(2), rel=1e-12)
    with pytest.raises(ValueError, match="incomparable, breslow"):
        plackett_luce_loss(pair, tie2, mask2, "efron")


def test_pick_best_label_is_softmax_cross_entropy():
    # lm-h-p PickBest: ranks (1, 2, 2, 2) → −log softmax(r)[best].
    rewards = torch.tensor([[0.1, 1.3, -0.4, 0.9]], dtype=F64)
    ranks = torch.tensor([[2, 1, 2, 2]])
    expected = -torch.log_softmax(rewards, -1)[0, 1]
    out = plackett_luce_loss(rewards, ranks, torch.ones(1, 4, dtype=torch.bool))
    assert out.item() == pytest.approx(expected.item(), rel=1e-12)


def test_plackett_luce_padding_garbage_has_no_effect():
    rewards = torch.tensor([[0.2, -0.1, float("nan"), float("inf")]], dtype=F64, requires_grad=True)
    ranks = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[True, True, False, False]])
    loss = plackett_luce_loss(rewards, ranks, mask)
    assert loss.item() == pytest.approx(_softplus(-0.3), rel=1e-12)
    loss.sum().backward()
    assert torch.isfinite(rewards.grad).all() and torch.equal(rewards.grad[0, 2:], torch.zeros(2, dtype=F64))


def test_centering_loss():
    out = centering_loss(torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([-1.0, 1.0], dtype=F64), 0.01)
    assert out.item() == pytest.approx(0.01 * (0.0 + 9.0) / 2, rel=1e-12)


def test_strength_to_margin():
    strength = torch.tensor([3, 2, 1, 0])
    torch.testing.assert_close(strength_to_margin(strength), torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    torch.testing.assert_close(strength_to_margin(strength, MARGIN_LARGE), torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert strength_to_margin(2).item() == pytest.approx(2 / 3, rel=1e-6)
    with pytest.raises(ValueError):
        strength_to_margin(torch.tensor([4]))


def test_combine_rewards():
    rewards = torch.tensor([[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]], dtype=F64)  # (M=3, B=2)
    torch.testing.assert_close(combine_rewards(rewards, "mean"), torch.tensor([3.0, 1.0], dtype=F64))
    torch.testing.assert_close(combine_rewards(rewards, "weighted_sum"), torch.tensor([3.0, 1.0], dtype=F64))
    weights = torch.tensor([0.5, 0.5, 0.0], dtype=F64)
    torch.testing.assert_close(combine_rewards(rewards, "weighted_sum", weights), torch.tensor([1.5, 0.0], dtype=F64))
    torch.testing.assert_close(combine_rewards(rewards, "min"), torch.tensor([1.0, 0.0], dtype=F64))
    # population variances: [(4 + 1 + 9)/3, (1 + 1 + 4)/3] = [14/3, 2]
    var = torch.tensor([14 / 3, 2.0], dtype=F64)
    torch.testing.assert_close(combine_rewards(rewards, "mean_minus_var", uncertainty_coef=0.5),
                               torch.tensor([3.0, 1.0], dtype=F64) - 0.5 * var)
    torch.testing.assert_close(combine_rewards(rewards, "mean_minus_std", uncertainty_coef=2.0),
                               torch.tensor([3.0, 1.0], dtype=F64) - 2.0 * var.sqrt())
    with pytest.raises(ValueError, match="uncertainty_coef"):
        combine_rewards(rewards, "mean_minus_std")
    with pytest.raises(ValueError, match="weighted_sum"):
        combine_rewards(rewards, "max")


def test_chosen_lm_loss_by_hand():
    from rlhfkit.algos.logprobs import logprobs_from_logits

    # Vocabulary of 2 with logits (0, ln 3): p = (1/4, 3/4) at every position. Response 1 has
    # targets (1, 0, 1) → NLL (ln(4/3) + ln 4 + ln(4/3)) / 3; response 2 has one target, 0 → ln 4,
    # with large garbage logits behind its mask; response 3 has no target → 0.
    logits = torch.tensor([0.0, math.log(3.0)], dtype=F64).repeat(3, 3, 1)
    logits[1, 1:] = torch.tensor([-1e4, 1e4], dtype=F64)
    targets = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    nll = chosen_lm_loss(logprobs_from_logits(logits, targets), mask)
    expected = [(2 * math.log(4 / 3) + math.log(4)) / 3, math.log(4), 0.0]
    torch.testing.assert_close(nll, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-15)
    # NaN log-probs at masked positions are never read: finite value, zero gradient there.
    logprobs = torch.tensor([[-1.0, -3.0, float("nan")]], dtype=F64, requires_grad=True)
    nll = chosen_lm_loss(logprobs, torch.tensor([[True, True, False]]))
    assert nll.item() == pytest.approx(2.0, rel=1e-12)
    nll.sum().backward()
    assert logprobs.grad.tolist() == [[-0.5, -0.5, 0.0]]


def test_chosen_lm_loss_matches_a_loop():
    gen = torch.Generator().manual_seed(1)
    logprobs = -torch.rand(5, 7, generator=gen, dtype=F64) * 4
    mask = torch.rand(5, 7, generator=gen) < 0.6
    mask[2] = False
    got = chosen_lm_loss(logprobs, mask)
    for b in range(5):
        picked = [-float(logprobs[b, t]) for t in range(7) if mask[b, t]]
        assert got[b].item() == pytest.approx(sum(picked) / len(picked) if picked else 0.0, rel=1e-12, abs=1e-15)
