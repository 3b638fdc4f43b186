"""Pieces every training loop shares: the Accelerator, the optimiser and schedule, batch plans,
and token-weighted loss scaling (run-directory bookkeeping lives in `rlhfkit.rundir`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlhfkit.config.common import OptimConfig, RunConfig

NO_DECAY_MARKERS = ("bias", "norm", "ln_", "layernorm")


def make_accelerator(run: RunConfig):
    """An Accelerator on whatever the launcher gave (CPU, one GPU, DDP/FSDP/DeepSpeed via
    `accelerate launch`). Gradient accumulation is done by our loops (one place for the loss scale),
    and the scheduler is stepped by us once per optimiser step whatever the process count."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    return Accelerator(
        mixed_precision="bf16" if run.precision == "bf16" else "no",
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(split_batches=False),
    )


def build_optimizer(params_named, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (biases, norms and 1-D parameters are exempt). The fused
    kernel (CPU and CUDA) updates every parameter in one pass: on CPU 3.6× faster than the default
    per-tensor loop (1.8 vs 6.6 ms for 2.4 M parameters), the same update up to rounding."""
    decay, no_decay = [], []
    for name, param in params_named:
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or any(m in name.lower() for m in NO_DECAY_MARKERS)
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  fused=True)
    optimizer.register_load_state_dict_pre_hook(keep_kernel_flags)
    return optimizer


KERNEL_FLAGS = ("fused", "foreach", "capturable")
"""Optimiser param-group keys that choose a kernel and where its state lives, not the arithmetic."""


def keep_kernel_flags(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """`load_state_dict` pre-hook: the checkpoint's groups take this optimiser's kernel flags, so a
    checkpoint written before AdamW was fused resumes on the fused kernel (torch would copy the
    saved flags, and places each `step` counter by them: on CUDA the fused kernel needs it on the
    GPU)."""
    for saved, own in zip(state_dict["param_groups"], optimizer.param_groups):
        saved.update({k: own[k] for k in KERNEL_FLAGS if k in own})


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """LR / peak LR at optimiser step `step` (0-based): linear warm-up from 0 over `warmup_steps`,
    then cosine  m + (1−m)·½(1 + cos(π·p))  or linear  m + (1−m)(1 − p)  with p the decay progress,
    or constant 1."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def build_scheduler(optimizer, cfg: OptimConfig, total_steps: int):
    warmup = int(cfg.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup, cfg.schedule, cfg.min_lr_ratio)
    )


@dataclass(frozen=True)
class BatchPlan:
    """How one global batch splits over processes and micro-batches."""

    batch_size: int
    """Global examples per optimiser step."""
    micro_batch_size: int
    """Examples per forward pass on one process."""
    num_processes: int
    grad_accum_steps: int
    """Micro-batches per process per optimiser step."""

    @classmethod
    def make(cls, batch_size: int, micro_batch_size: int, num_processes: int) -> "BatchPlan":
        per_process, micro = batch_size // num_processes, min(micro_batch_size, batch_size // num_processes)
        if batch_size % num_processes or micro == 0 or per_process % micro:
            raise ValueError(
                f"batch_size {batch_size} must split evenly into {num_processes} process(es) × micro-batches of "
                f"{micro_batch_size}"
            )
        return cls(batch_size, micro, num_processes, per_process // micro)

    def micro_batches(self, global_indices: list[int], rank: int) -> list[list[int]]:
        """This process's micro-batches of one global batch (the process's shard is strided)."""
        mine = global_indices[rank :: self.num_processes]
        return [mine[i : i + self.micro_batch_size] for i in range(0, len(mine), self.micro_batch_size)]


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a pure function of (seed, epoch), identical on every process,
    so the data position after a resume is just the step counter."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def global_batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of global batch number `step` (0-based); the last incomplete batch of an epoch is
    dropped so every step has the same size."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n} examples are fewer than one batch of {batch_size}")
    epoch, k = divmod(step, per_epoch)
    return epoch_permutation(n, seed, epoch)[k * batch_size : (k + 1) * batch_size]
