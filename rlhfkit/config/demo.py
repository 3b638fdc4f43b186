"""Config of `rlhfkit demo`: the whole pipeline with defaults sized for a 2-core CPU.

Stage configs that are used whole (SFT, RM, PPO) are nested so any field can be overridden
(`rlhfkit demo ppo.max_steps=60`); their paths (run dirs, model dirs, data files) are filled in by
the demo under `--out`. Sampling, labelling and evaluation are set by the few knobs below.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from rlhfkit.config.base import Section
from rlhfkit.config.common import ModelConfig, OptimConfig, RunConfig, TinyModelConfig
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.config.rm import RMConfig
from rlhfkit.config.sft import SFTConfig, SFTDataConfig, SFTEvalConfig


class DemoSamplingConfig(Section):
    """Candidate responses for the preference data: K per prompt from two SFT variants."""

    n_train_prompts: int = Field(1200, gt=0)
    """Training prompts to collect preferences on."""
    n_eval_prompts: int = Field(150, gt=0)
    """Held-out prompts whose preferences measure RM accuracy."""
    temperatures: tuple[float, float] = (1.0, 0.7)
    """Sampling temperatures of the two policy variants (same SFT checkpoint); positive, distinct."""

    @model_validator(mode="after")
    def _temperatures(self) -> "DemoSamplingConfig":
        low, high = sorted(self.temperatures)
        if low <= 0 or low == high:
            raise ValueError(f"sampling.temperatures {list(self.temperatures)} must be two distinct positive "
                             "values (they name the two variants)")
        return self
    samples_per_variant: int = Field(2, ge=1, le=4)
    """Responses per prompt from each variant (K = 2 × this, before de-duplication)."""
    max_new_tokens: int = Field(40, gt=0)
    """Response length limit of the candidates."""


class DemoLabelConfig(Section):
    """Simulated annotators ranking the candidates (Bradley–Terry noise around the gold reward)."""

    n_annotators: int = Field(3, gt=0)
    """Distinct simulated annotators (each labels a share of the sets)."""
    temperature: float | None = Field(None, gt=0)
    """Annotator noise τ; null = the task's default (≈ 75 % agreement with the noiseless order)."""


class DemoEvalConfig(Section):
    """Held-out evaluation of SFT vs PPO by the gold judge."""

    n_prompts: int = Field(300, gt=0)
    """Held-out (test split) prompts."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature of the evaluated responses (the PPO rollout temperature)."""
    max_new_tokens: int = Field(40, gt=0)
    """Response length limit."""


FILLED_BY_DEMO = "<set by the demo>"
"""Placeholder for paths the demo fills in (model dirs, data files under --out)."""

class OveroptConfig(Section):
    """Gao et al.'s over-optimisation study: a long PPO run with no KL penalty and a best-of-n curve
    against the same proxy RM, with proxy and gold reward plotted against √KL and the functional
    forms fitted. The main PPO run (β > 0) is analysed beside it to show the gap shrinking."""

    enabled: bool = False
    """Run the study after the main pipeline (adds ~10 minutes on 2 cores)."""
    ppo_steps: int = Field(150, gt=0)
    """PPO steps of the unpenalised run."""
    kl_coef: float = Field(0.0, ge=0)
    """KL coefficient of that run (0 = no penalty, as in most of Gao's runs)."""
    bon_n_max: int = Field(64, ge=2)
    """Largest n of the best-of-n curve."""
    bon_prompts: int = Field(64, gt=0)
    """Held-out prompts of the best-of-n curve."""


DEMO_TINY = TinyModelConfig(arch="llama", hidden_size=128, num_layers=3, num_heads=4, vocab_size=768,
                            max_positions=128, tokenizer_lines=3000)


class DemoConfig(Section):
    """The whole pipeline on the built-in task. Run directories are placed under `--out`."""

    seed: int = 0
    """Seed of the task generator and of every stage."""
    rounds: int = Field(1, ge=1)
    """Rounds of iterated RLHF: each round after the first samples new candidates from the latest
    PPO policy, labels them, retrains the RM on all preferences so far and continues PPO from the
    latest PPO policy, its KL still measured to the SFT model (`ppo.kl.reference_path`)."""
    num_threads: int | None = Field(None, gt=0)
    """Torch CPU threads for every stage; null = torch's default (one per core)."""
    sft: SFTConfig = SFTConfig(
        model=ModelConfig(tiny=DEMO_TINY),
        data=SFTDataConfig(n_train=6000, n_eval=256),
        optim=OptimConfig(lr=3e-3, warmup_ratio=0.03),
        batch_size=64,
        micro_batch_size=64,
        epochs=6.0,
        eval=SFTEvalConfig(n_sample_prompts=128),
        run=RunConfig(eval_every=200, save_every=200, log_every=10),
    )
    """Supervised fine-tuning stage."""
    sampling: DemoSamplingConfig = DemoSamplingConfig()
    """Candidate sampling for the preference data."""
    labels: DemoLabelConfig = DemoLabelConfig()
    """Simulated annotators."""
    rm: RMConfig = RMConfig.model_validate({
        # A path, not empty: the backbone is the SFT model, so the tiny-model check of max_length
        # against rm.model.tiny does not apply.
        "model": {"path": FILLED_BY_DEMO},
        "data": {"kind": "ranking"},
        "loss": {"type": "pl"},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.05},
        "batch_size": 16, "micro_batch_size": 16, "epochs": 4.0,
        "normalize": {"source": "policy", "policy_path": FILLED_BY_DEMO, "n_samples": 256, "max_new_tokens": 40},
        "run": {"eval_every": 50, "save_every": 50, "log_every": 10},
    })
    """Reward-model stage (backbone: the SFT model)."""
    ppo: PPOConfig = PPOConfig.model_validate({
        "reward": {"source": "rm", "rm_paths": [FILLED_BY_DEMO], "missing_eos_penalty": 1.0},
        "kl": {"controller": "fixed", "init_coef": 0.1, "estimator": "k1", "placement": "reward"},
        "rollout": {"max_new_tokens": 40, "temperature": 0.7},
        "advantage": "gae", "value": {"kind": "critic", "init": "rm", "pretrain_steps": 2},
        "value_clip_eps": None,
        "rollout_batch_size": 64, "minibatch_size": 32, "microbatch_size": 32, "ppo_epochs": 4,
        "max_steps": 40,
        "optim": {"lr": 1.5e-4, "schedule": "constant"}, "critic_optim": {"lr": 1e-3},
        "data": {"n_eval_prompts": 64},
    })
    """PPO stage (policy and reference: the SFT model; reward: the trained RM)."""
    eval: DemoEvalConfig = DemoEvalConfig()
    """Final evaluation."""
    overopt: OveroptConfig = OveroptConfig()
    """Optional over-optimisation study (proxy vs gold reward against √KL)."""
