"""Config of `rlhfkit demo`: every stage's config with defaults tuned for a 2-core CPU."""

from __future__ import annotations

from rlhfkit.config.base import Section
from rlhfkit.config.common import OptimConfig, RunConfig
from rlhfkit.config.sft import SFTConfig, SFTDataConfig, SFTEvalConfig


class DemoConfig(Section):
    """The whole pipeline on the built-in task. Run directories are placed under `--out`."""

    seed: int = 0
    """Seed of the task generator and of every stage."""
    sft: SFTConfig = SFTConfig(
        data=SFTDataConfig(n_train=4000, n_eval=256),
        optim=OptimConfig(lr=3e-3, warmup_ratio=0.05),
        epochs=4.0,
        eval=SFTEvalConfig(n_sample_prompts=128),
        run=RunConfig(eval_every=200, save_every=200, log_every=10),
    )
    """Supervised fine-tuning stage."""
