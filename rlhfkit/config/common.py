"""Config sections shared by several stages (model, LoRA, optimiser, run bookkeeping)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhfkit.config.base import Section

Precision = Literal["fp32", "bf16"]


class TinyModelConfig(Section):
    """A small model built from config (used when `model.path` is empty): for tests and the demo."""

    arch: Literal["llama", "gpt2"] = "llama"
    """Architecture family of the tiny model."""
    hidden_size: int = Field(128, gt=0)
    """Width of the residual stream."""
    num_layers: int = Field(3, gt=0)
    """Number of transformer blocks."""
    num_heads: int = Field(4, gt=0)
    """Attention heads (must divide hidden_size)."""
    intermediate_size: int | None = None
    """MLP width; default 4×hidden (gpt2) or ≈8/3×hidden (llama)."""
    vocab_size: int = Field(1024, gt=16)
    """Size of the BPE vocabulary trained on the task's text."""
    max_positions: int = Field(128, gt=8)
    """Longest sequence (prompt + response) the model can take."""
    tokenizer_lines: int = Field(4000, gt=0)
    """Lines of task text used to train the tokenizer."""


class LoraConfig(Section):
    """Low-rank adapters through PEFT."""

    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    r: int = Field(8, gt=0)
    """Adapter rank."""
    alpha: int = Field(16, gt=0)
    """Scaling numerator (effective scale alpha / r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; None = every linear layer of the blocks (PEFT's "all-linear": the LM
    head and the embeddings are left as they are)."""


class ModelConfig(Section):
    """Which model to start from."""

    path: str | None = None
    """Local Hugging Face model directory (or hub name when online). Empty = build a tiny model."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the tiny model built when `path` is empty."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters."""
    disable_dropout: bool = True
    """Set every dropout probability to 0 (recommended for RM and PPO; N+ / Ziegler)."""


class OptimConfig(Section):
    """AdamW with warm-up and a decaying schedule."""

    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay (AdamW), not applied to biases and norms."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam β1, β2."""
    eps: float = Field(1e-8, gt=0)
    """Adam ε (PPO practice is 1e-5; PyTorch puts it inside the bias-corrected denominator)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up: cosine or linear to `min_lr_ratio`·lr, or constant."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Fraction of the optimiser steps spent warming up linearly from 0."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Final learning rate as a fraction of the peak."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Global gradient-norm clipping; null disables it."""


class RunConfig(Section):
    """Run directory, seeding, logging and checkpoint cadence."""

    out_dir: str = "runs/run"
    """Run directory: config.yaml, metrics.jsonl, TensorBoard events, summary.json, checkpoints/, model/."""
    seed: int = 0
    """Seed for every random number generator (PPO derives per-process seeds from it; SFT and RM
    seed every process alike, their data order being global)."""
    log_every: int = Field(10, gt=0)
    """Log training metrics every N optimiser steps."""
    eval_every: int = Field(100, gt=0)
    """Evaluate every N optimiser steps (and at the end)."""
    save_every: int = Field(100, gt=0)
    """Write a resumable checkpoint every N optimiser steps (and at the end)."""
    keep_checkpoints: int = Field(2, gt=0)
    """How many recent checkpoints to keep."""
    resume: bool = True
    """Resume from the latest checkpoint in out_dir when there is one; false starts fresh, and is
    refused when out_dir holds checkpoints (they would mix with the new run's)."""
    precision: Precision = "fp32"
    """Compute precision: fp32, or bf16 autocast (CPU with AVX512-BF16, or GPU)."""
    num_threads: int | None = None
    """Torch CPU threads; null = torch's default."""
    progress: bool = True
    """Show a progress bar."""
    stop_after_steps: int | None = None
    """Stop (as if killed) after this many optimiser steps of this invocation; for resume testing."""
