"""Schedule, batch plans and data order: the pieces exact resume and accumulation rest on."""

import math

import pytest

from rlhfkit.train.common import BatchPlan, global_batch_indices, lr_multiplier


def test_lr_schedule_by_hand():
    # 10 steps, 2 warm-up: 0.5, 1.0, then cosine over 8 steps to min ratio 0.1
    assert lr_multiplier(0, 10, 2, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_multiplier(1, 10, 2, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(2, 10, 2, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(6, 10, 2, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(10, 10, 2, "linear", 0.0) == pytest.approx(0.0)
    assert lr_multiplier(5, 10, 0, "constant", 0.0) == 1.0


def test_batch_plan_splits_and_rejects():
    plan = BatchPlan.make(8, 2, 2)
    assert plan.grad_accum_steps == 2
    batches = plan.micro_batches(list(range(8)), rank=1)
    assert batches == [[1, 3], [5, 7]]
    with pytest.raises(ValueError, match="split evenly"):
        BatchPlan.make(6, 4, 1)


def test_data_order_depends_only_on_seed_and_step():
    a = [global_batch_indices(10, 4, seed=3, step=s) for s in range(4)]
    b = [global_batch_indices(10, 4, seed=3, step=s) for s in range(4)]
    assert a == b
    assert len(set(a[0] + a[1])) == 8  # no repeats inside one epoch
    assert a[2] != a[0]  # a new epoch reshuffles
