"""Masked reductions, whitening (lm-h-p vector) and loss aggregation (rlhf-book vector)."""

import math

import pytest
import torch

from rlhfkit.algos.masking import (
    aggregate_token_loss,
    last_true_mask,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

# Values quoted to 4 decimals in the source: compare to half a unit in the last place.
QUOTED_4DP = 5e-5


def test_whiten_matches_lm_human_preferences_vector():
    # N-implementation-details blog, detail 9 / rlhf-details c7: biased variance, shift_mean=False.
    rewards = torch.tensor([[1.2, 1.3, 1.4], [1.5, 1.6, 1.7], [1.8, 1.9, 2.0]], dtype=torch.float64)
    expected = torch.tensor(
        [[0.0508, 0.4381, 0.8254], [1.2127, 1.6000, 1.9873], [2.3746, 2.7619, 3.1492]], dtype=torch.float64
    )
    out = masked_whiten(rewards, torch.ones(3, 3, dtype=torch.bool), shift_mean=False)
    torch.testing.assert_close(out, expected, atol=QUOTED_4DP, rtol=0)


def test_whiten_by_hand_and_with_unbiased_variance_it_would_differ():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    mask = torch.ones(4, dtype=torch.bool)
    # mean 2.5, biased var 1.25
    expected = (x - 2.5) / math.sqrt(1.25 + 1e-8)
    torch.testing.assert_close(masked_whiten(x, mask), expected, rtol=1e-12, atol=0)
    unbiased = (x - 2.5) / math.sqrt(5.0 / 3.0)
    assert not torch.allclose(masked_whiten(x, mask), unbiased, rtol=1e-3)


def test_whiten_ignores_masked_garbage_and_zeroes_it():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), -1e30]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = masked_whiten(x, mask)
    real = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    expected_real = (real - 2.0) / torch.sqrt(torch.tensor(2.0 / 3.0 + 1e-8, dtype=torch.float64))
    torch.testing.assert_close(out[mask], expected_real, rtol=1e-12, atol=0)
    assert torch.equal(out[~mask], torch.zeros(3, dtype=torch.float64))


def test_masked_mean_sum_var_against_slow_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 7, generator=gen) > 0.4
    mask[2] = False  # an empty row
    kept = [x[i, j].item() for i in range(4) for j in range(7) if mask[i, j]]
    mean = sum(kept) / len(kept)
    var = sum((v - mean) ** 2 for v in kept) / len(kept)
    assert masked_sum(x, mask).item() == pytest.approx(sum(kept), rel=1e-12)
    assert masked_mean(x, mask).item() == pytest.approx(mean, rel=1e-12)
    assert masked_var(x, mask).item() == pytest.approx(var, rel=1e-12)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(var * len(kept) / (len(kept) - 1), rel=1e-12)
    rows = masked_mean(x, mask, dim=-1)
    for i in range(4):
        row = [x[i, j].item() for j in range(7) if mask[i, j]]
        assert rows[i].item() == pytest.approx(sum(row) / len(row) if row else 0.0, rel=1e-12)


def test_masked_mean_gradient_is_finite_with_nan_padding():
    x = torch.tensor([1.0, float("nan"), 3.0], requires_grad=True)
    mask = torch.tensor([True, False, True])
    masked_mean(x, mask).backward()
    assert torch.equal(x.grad, torch.tensor([0.5, 0.0, 0.5]))


def test_last_true_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]]).bool()
    expected = torch.tensor([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]]).bool()
    assert torch.equal(last_true_mask(mask), expected)


# rlhf-book ch. 6 / rlhf-details c″: per-token losses [1,1,1,1,10] and [1×9, 10].
LOSS = torch.tensor([[1, 1, 1, 1, 10, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 10]], dtype=torch.float64)
MASK = torch.tensor([[1] * 5 + [0] * 5, [1] * 10]).bool()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("seq_mean_token_mean", (14 / 5 + 19 / 10) / 2),  # 2.35
        ("token_mean", 33 / 15),  # 2.2
        ("seq_mean_token_sum_norm", (1.4 + 1.9) / 2),
    ],
)
def test_loss_aggregation_vector(mode, expected):
    out = aggregate_token_loss(LOSS, MASK, mode, max_len=10)
    assert out.item() == pytest.approx(expected, rel=1e-12)


def test_aggregation_quoted_values():
    assert aggregate_token_loss(LOSS, MASK, "seq_mean_token_mean").item() == pytest.approx(2.35, rel=1e-12)
    assert aggregate_token_loss(LOSS, MASK, "token_mean").item() == pytest.approx(2.2, rel=1e-12)


def test_aggregation_ignores_garbage_and_empty_rows():
    garbage = LOSS.clone()
    garbage[0, 5:] = float("nan")
    with_empty = torch.cat([garbage, torch.full((1, 10), float("inf"), dtype=torch.float64)])
    mask = torch.cat([MASK, torch.zeros(1, 10, dtype=torch.bool)])
    # An empty row does not count as a sequence in the per-sequence mean.
    assert aggregate_token_loss(with_empty, mask, "seq_mean_token_mean").item() == pytest.approx(2.35, rel=1e-12)
    assert aggregate_token_loss(with_empty, mask, "token_mean").item() == pytest.approx(2.2, rel=1e-12)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="max_len"):
        aggregate_token_loss(LOSS, MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="token_mean"):
        aggregate_token_loss(LOSS, MASK, "sum")


def _whiten_shard(rank: int, init_file: str, x: torch.Tensor, mask: torch.Tensor, out: str) -> None:
    """One of two gloo processes: whiten its half of the rows with the all-reduced statistics."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    rows = slice(0, 3) if rank == 0 else slice(3, 6)
    for shift_mean in (True, False):
        torch.save(masked_whiten(x[rows], mask[rows], shift_mean, reduce_sum=reduce_sum), f"{out}.{rank}.{shift_mean}")
    dist.destroy_process_group()


def test_whiten_over_two_processes_equals_one_process_over_all_rows(tmp_path):
    """Data-parallel whitening: 2 processes × 3 rows with all-reduced statistics = 1 process × 6
    rows. The halves have different means and spreads, so per-process statistics would differ."""
    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    x[3:] = 4.0 * x[3:] + 3.0
    mask = torch.rand(6, 5, generator=gen) > 0.3
    mask[:, 0] = True
    x = torch.where(mask, x, torch.tensor(float("nan"), dtype=torch.float64))  # garbage must not leak
    out = str(tmp_path / "shard")
    # fork: the worker is a function of this test module, which a spawned child could not import.
    mp.start_processes(_whiten_shard, args=(str(tmp_path / "init"), x, mask, out), nprocs=2, join=True,
                       start_method="fork")
    for shift_mean in (True, False):
        two = torch.cat([torch.load(f"{out}.{rank}.{shift_mean}") for rank in (0, 1)])
        torch.testing.assert_close(two, masked_whiten(x, mask, shift_mean), rtol=1e-12, atol=1e-12)
        local = masked_whiten(x[:3], mask[:3], shift_mean)
        assert not torch.allclose(two[:3], local, rtol=1e-3)
