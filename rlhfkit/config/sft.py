"""Config of the supervised fine-tuning stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Section
from rlhfkit.config.common import ModelConfig, OptimConfig, RunConfig


class SFTDataConfig(Section):
    """Where demonstrations come from: the built-in task, or files of `SFTExample` records."""

    task: str | None = "reviews"
    """Built-in task that generates the data (used when `train_path` is empty)."""
    task_seed: int = 0
    """Seed of the built-in task's generator."""
    train_path: str | None = None
    """SFT data file (JSONL / Parquet / datasets folder); overrides the task."""
    eval_path: str | None = None
    """Held-out SFT data; default: `eval_fraction` of the training file."""
    n_train: int = Field(4000, gt=0)
    """Demonstrations to generate from the task (or the first N of the file)."""
    n_eval: int = Field(256, gt=0)
    """Held-out demonstrations."""
    eval_fraction: float = Field(0.05, gt=0, lt=1)
    """Held-out share when only `train_path` is given."""
    max_seq_len: int = Field(96, gt=8)
    """Longest prompt+response in tokens; longer examples are errors (or skipped, see on_error)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad or too-long records: stop with a file:line error, or skip and count by reason."""


class SFTEvalConfig(Section):
    n_sample_prompts: int = Field(64, ge=0)
    """Held-out prompts to sample from at each eval (for the gold reward and the logged samples)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of those generations."""
    max_new_tokens: int = Field(40, gt=0)
    """Response length limit of those generations."""
    n_logged_samples: int = Field(4, ge=0)
    """Sample generations written to the log at each eval."""


class SFTConfig(Section):
    """Causal-LM fine-tuning with the loss on response tokens only."""

    model: ModelConfig = ModelConfig()
    """Model to fine-tune."""
    data: SFTDataConfig = SFTDataConfig()
    """Training and held-out data."""
    optim: OptimConfig = OptimConfig(lr=3e-3, warmup_ratio=0.05)
    """Optimiser and schedule."""
    batch_size: int = Field(32, gt=0)
    """Global sequences per optimiser step (all processes, all micro-batches)."""
    micro_batch_size: int = Field(32, gt=0)
    """Sequences per forward pass on one process, at most the per-process batch (a larger value is
    lowered to it); gradient accumulation covers the rest."""
    epochs: float = Field(4.0, gt=0)
    """Passes over the training data (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, gt=0)
    """Optimiser steps to run; overrides epochs."""
    eval: SFTEvalConfig = SFTEvalConfig()
    """Held-out evaluation."""
    run: RunConfig = RunConfig(out_dir="runs/sft", eval_every=100, save_every=100)
    """Run directory and cadence."""

    @model_validator(mode="after")
    def _consistent(self) -> "SFTConfig":
        if not self.model.path and self.data.max_seq_len > self.model.tiny.max_positions:
            raise ValueError(f"data.max_seq_len {self.data.max_seq_len} exceeds the tiny model's "
                             f"model.tiny.max_positions {self.model.tiny.max_positions}")
        return self
