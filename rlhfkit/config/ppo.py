"""Config of the PPO stage (and of the critic-free variants that reuse its loop).

Defaults follow the published recipes where they agree (rlhf-details §1(c)): clip ε 0.2, value
clip 0.2, γ 1, λ 0.95, vf_coef 0.1, Adam ε 1e-5, linear LR anneal, no entropy bonus, k1 KL in the
reward, full-vocabulary sampling. Learning rates and sizes are those of the built-in task on a
tiny model (a 1B-class model wants a policy LR around 1e-6–3e-6).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Section
from rlhfkit.config.common import ModelConfig, OptimConfig, RunConfig

AdvantageName = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
"""Names of `rlhfkit.algos.advantages` estimators (the registry is the source of truth)."""



# Subclasses rather than instances with other defaults: a `key=value` override of one field builds
# the section from its class defaults, so the PPO defaults must live on the class.
class PolicyOptimConfig(OptimConfig):
    """The policy's AdamW: PPO-standard ε 1e-5 and a linear anneal to 0 (N+, 37 details #3–4)."""

    lr: float = Field(1e-4, gt=0)
    """Peak learning rate (tiny models on the built-in task; 1e-6–3e-6 for 1B-class models)."""
    eps: float = Field(1e-5, gt=0)
    """Adam ε (PyTorch puts it inside the bias-corrected denominator; 1e-8 takes larger early steps, c12)."""
    schedule: Literal["cosine", "linear", "constant"] = "linear"
    """Decay after warm-up: linear to `min_lr_ratio`·lr (lm-h-p, N+), cosine, or constant."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of the optimiser steps spent warming up linearly from 0."""


class CriticOptimConfig(PolicyOptimConfig):
    """The separate critic's AdamW."""

    lr: float = Field(3e-4, gt=0)
    """Peak learning rate of the critic."""


class PPORunConfig(RunConfig):
    """Run directory and cadence, counted in PPO steps (rollout + update)."""

    out_dir: str = "runs/ppo"
    """Run directory: config.yaml, metrics.jsonl, TensorBoard events, summary.json, checkpoints/, model/."""
    log_every: int = Field(1, gt=0)
    """Log metrics every N PPO steps."""
    save_every: int = Field(10, gt=0)
    """Write a resumable checkpoint every N PPO steps (and at the end)."""
    eval_every: int = Field(100, gt=0)
    """Unused by PPO: it evaluates the held-out prompts before the first step and after the last."""
    stop_after_steps: int | None = None
    """Stop (as if killed) after this many PPO steps of this invocation; for resume testing."""


class PPODataConfig(Section):
    """Where prompts come from: the built-in task, or a file of `PromptRecord`s."""

    task: str | None = "reviews"
    """Built-in task that supplies prompts (and the gold reward); used when `prompts_path` is empty."""
    task_seed: int = 0
    """Seed of the built-in task's generator (must match the SFT stage's)."""
    prompts_path: str | None = None
    """Prompt file (JSONL / Parquet / datasets folder of PromptRecords, or any layout with prompts,
    such as HH-RLHF `chosen`/`rejected` rows); overrides the task's prompts."""
    prompts_skip: int = Field(0, ge=0)
    """Leading records of `prompts_path` left out of training (e.g. the rows an RM held out)."""
    eval_prompts_path: str | None = None
    """Prompt file of the held-out evaluation (its first `n_eval_prompts` usable prompts; from the
    training file, only among its first `prompts_skip` rows); empty = the task's eval split."""
    n_train_prompts: int = Field(4000, gt=0)
    """Training prompts (from the task's train split, or the first N usable ones of the file after
    `prompts_skip`)."""
    n_eval_prompts: int = Field(64, ge=0)
    """Held-out prompts for the before/after evaluation; 0 skips it."""
    max_prompt_tokens: int = Field(64, gt=0)
    """Longer prompts are skipped (and counted in the derived config)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad records in the prompt files: stop with a file:line error, or skip and count by reason."""


class ValueConfig(Section):
    """The value function V(prefix) used by GAE (ignored by critic-free estimators)."""

    kind: Literal["critic", "head"] = "critic"
    """`critic`: a separate network (Stiennon; better on small tasks per 37-details #13); `head`: a
    zero-initialised linear head on the policy trunk (lm-human-preferences)."""
    init: Literal["policy", "rm"] = "policy"
    """Critic initialisation: the SFT policy's trunk, or the (first) reward model with its head
    (InstructGPT, N+). `rm` needs `reward.source=rm` and an RM with the policy's tokenizer and a
    causal trunk (the critic reads the policy's tokens; an encoder would let values see ahead)."""
    pretrain_steps: int = Field(0, ge=0)
    """Rollouts spent training only the value function before PPO starts (Secrets of RLHF I)."""


class RewardConfig(Section):
    """The sequence score: reward model(s), the task's gold oracle, or a Python callable."""

    source: Literal["rm", "gold", "callable"] = "rm"
    """`rm`: reward model directories; `gold`: the built-in task's gold reward; `callable`: a function."""
    rm_paths: list[str] = []
    """Reward-model directories (the RM stage's `RUN/model`); several are combined by `ensemble`."""
    ensemble: Literal["mean", "min", "mean_minus_std", "mean_minus_var"] = "mean"
    """How several RMs (or heads) combine: mean, worst case, or mean − λ·std / mean − λ·var
    (uncertainty-weighted optimisation, Coste et al. 2023)."""
    ensemble_coef: float | None = Field(None, ge=0)
    """λ of the uncertainty-weighted modes (required with them; unused by mean and min)."""
    callable: str | None = None
    """`module:function` taking (prompts, responses, finished) lists and returning one score each."""
    normalized: bool = True
    """Use the RM's stored normalisation (SFT-sample mean 0, std 1)."""
    missing_eos_penalty: float | None = 1.0
    """Score change for responses truncated without EOS (the EOS trick, c4); null disables it."""
    missing_eos_mode: Literal["subtract", "replace"] = "subtract"
    """`subtract` the penalty from the score (TRL), or `replace` the score with −penalty (N+)."""
    clip: float | None = None
    """Clip scores to ±clip (PPO-max, c19); null disables it."""
    whiten: bool = False
    """Whiten per-token rewards per rollout without restoring the mean (lm-h-p; TL;DR runs: off)."""
    batch_size: int = Field(64, gt=0)
    """Responses per reward-model forward pass."""


class KLConfig(Section):
    """The KL(π ‖ π_ref) regulariser."""

    init_coef: float = Field(0.05, ge=0)
    """β at the start (N+ 0.05; InstructGPT 0.02; GRPO uses 0.04 in the loss)."""
    controller: Literal["fixed", "adaptive"] = "fixed"
    """Keep β fixed, or steer the sequence KL to `target` (Ziegler's proportional controller)."""
    target: float = Field(6.0, gt=0)
    """Adaptive target, nats per sequence."""
    horizon: int = Field(10_000, gt=0)
    """Adaptive horizon in episodes; scale it to the run (β moves ≤ ±20%·batch/horizon per step)."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token estimator (Schulman 2020): k1 unbiased/high variance, k3 unbiased ≥ 0, k2 biased."""
    placement: Literal["reward", "loss"] = "reward"
    """`reward`: −β·KL per token in the reward (PPO, RLOO); `loss`: β·KL added to the loss (GRPO).
    Either way β is the controller's value for the step (fixed, or adaptive)."""
    max_kl: float | None = None
    """Stop the run when the sequence KL to the reference exceeds this (nats); null = never."""
    ref_refresh_every: int | None = Field(None, gt=0)
    """Copy the policy into the reference every N steps (not with LoRA or `reference_path`); null = never."""
    reference_path: str | None = None
    """Model directory of the reference π_ref; null = the policy's starting weights (`policy.path`).
    Set it when PPO continues from an earlier PPO model and the KL should still be measured to the
    SFT model (iterated RLHF). It must have the policy's tokenizer; with LoRA it is a separate
    frozen model instead of the policy's base weights. Not with `ref_refresh_every`, which would
    replace it by the policy."""


class VLLMConfig(Section):
    """The vLLM rollout engine (`rollout.engine=vllm`): one engine beside the policy on one GPU."""

    gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    """Fraction of the GPU's memory vLLM takes for its copy of the weights and its KV cache; the
    rest is left to training (policy, reference, critic, optimiser states)."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Weights and activations of the engine; the sampling numerics only, since the old log-probs
    are recomputed by the training forward."""
    enforce_eager: bool = False
    """Skip CUDA-graph capture: faster start and less memory, slower decoding (tiny runs, debugging)."""


class RolloutConfig(Section):
    """Sampling of responses; log-probs everywhere are divided by `temperature`."""

    engine: Literal["hf", "vllm"] = "hf"
    """Sampler: Hugging Face `generate` on the policy itself, or vLLM (CUDA only, `pip install
    rlhfkit[vllm]`, one process), which holds a copy of the weights synced after every update and
    always recomputes the old log-probs."""
    max_new_tokens: int = Field(48, gt=0)
    """Response length limit; longer responses are truncated and get the missing-EOS penalty."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature (lm-h-p / N+ 0.7); also divides the logits of every log-prob."""
    top_k: int = Field(0, ge=0)
    """0 = the full vocabulary; truncated sampling biases the KL estimate negative (c2)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """1 = the full vocabulary (see top_k)."""
    group_size: int = Field(1, gt=0)
    """Responses per prompt (G); critic-free estimators need ≥ 2."""
    recompute_logprobs: bool = False
    """Recompute PPO's old log-probs with one forward pass of the policy instead of taking them
    from generation: for bf16, where KV-cache decoding and the full forward round differently
    (the first ratio then drifts from 1 by up to ~0.2 on a 30-layer model); costs a forward.
    Always on with `engine=vllm`."""
    vllm: VLLMConfig = VLLMConfig()
    """Settings of the vLLM engine (ignored by `hf`)."""


class PTXConfig(Section):
    """Mixing the SFT loss into the PPO update (InstructGPT's PPO-ptx)."""

    coef: float = Field(0.0, ge=0)
    """Weight γ of the SFT NLL (InstructGPT 27.8 with pre-training data); 0 disables it."""
    batch_size: int = Field(8, gt=0)
    """SFT demonstrations per optimiser step (all micro-batches of a minibatch together)."""
    n_examples: int = Field(2000, gt=0)
    """Demonstrations used: drawn from the task's SFT train split, or the first N of `data_path`."""
    data_path: str | None = None
    """SFT records (JSONL / Parquet / datasets folder, the `rlhfkit sft` format) instead of the task's
    demonstrations; a bad or too-long record stops the run with its file and line."""
    max_seq_len: int = Field(512, gt=8)
    """Longest prompt+response of a `data_path` demonstration, in policy tokens."""


class StopConfig(Section):
    """Early stopping besides `max_steps` (the KL limit is `kl.max_kl`)."""

    plateau_patience: int | None = Field(None, gt=0)
    """Stop after this many steps without the mean score improving by `plateau_min_delta`."""
    plateau_min_delta: float = Field(0.01, ge=0)
    """Smallest improvement of the best mean score that resets the patience."""
    max_skipped_minibatches: int = Field(8, ge=0)
    """Minibatches with a non-finite loss are skipped; past this many the run stops."""


class PPOConfig(Section):
    """PPO (and GRPO / RLOO / REINFORCE++) fine-tuning of an SFT policy against a reward."""

    policy: ModelConfig = ModelConfig()
    """The SFT model to start from (`policy.path`, required: the SFT stage's `RUN/model`); LoRA optional."""
    data: PPODataConfig = PPODataConfig()
    """Prompts."""
    reward: RewardConfig = RewardConfig()
    """Reward source and shaping."""
    kl: KLConfig = KLConfig()
    """KL regularisation."""
    rollout: RolloutConfig = RolloutConfig()
    """Sampling."""
    value: ValueConfig = ValueConfig()
    """Value function (GAE only)."""
    ptx: PTXConfig = PTXConfig()
    """SFT-loss mixing."""
    stop: StopConfig = StopConfig()
    """Early stopping."""
    advantage: AdvantageName = "gae"
    """Advantage estimator from the registry (`rlhfkit.algos.advantages`)."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount (no discount in RLHF: lm-h-p, InstructGPT)."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE λ."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO ratio clip ε."""
    value_clip_eps: float | None = Field(0.2, gt=0)
    """Value clip around the rollout values; null = unclipped (Andrychowicz 2021 find clipping hurts)."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss (shared-trunk head; a separate critic has its own optimiser)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus weight (off in lm-h-p, N+, InstructGPT)."""
    whiten_advantages: bool | None = None
    """Whiten advantages per rollout (mean 0, std 1); null = on with a value function (GAE), off for
    critic-free estimators, which normalise in their own way."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """Reduction of per-token losses (GRPO: seq_mean_token_mean; Dr. GRPO: seq_mean_token_sum_norm)."""
    rollout_batch_size: int = Field(64, gt=0)
    """Responses per PPO step, global (prompts × group_size)."""
    minibatch_size: int = Field(32, gt=0)
    """Responses per optimiser step, global; rollout_batch_size must be a multiple."""
    microbatch_size: int = Field(16, gt=0)
    """Responses per forward pass on one process; gradient accumulation covers the minibatch."""
    forward_batch_size: int = Field(64, gt=0)
    """Responses per no-grad forward (reference, values) on one process."""
    ppo_epochs: int = Field(4, gt=0)
    """Passes over each rollout (lm-h-p, N+: 4; GRPO, InstructGPT: 1)."""
    compile: bool = False
    """torch.compile the PPO update's forward (and so backward) of the policy and the critic: fuses
    the element-wise work around the matmuls (critic pre-training and the PTX term stay eager). Measured per micro-batch fwd+bwd on CPU: −13 % fp32,
    −50 % bf16 with `attention=eager`; the first steps pay ~10–20 s of compilation per model, and
    each new batch shape once more. Generation and no-grad forwards stay eager."""
    attention: Literal["sdpa", "eager"] | None = None
    """Attention kernel of the policy, reference and critic; null = the model's own (sdpa). eager
    trains faster in bf16 on CPU, where PyTorch's bf16 flash-attention backward is slow."""
    max_steps: int = Field(100, gt=0)
    """PPO steps (rollout + update); the LR anneals over max_steps × epochs × minibatches."""
    optim: PolicyOptimConfig = PolicyOptimConfig()
    """Policy optimiser (Adam ε 1e-5, linear anneal to 0: N+, 37 details #3–4)."""
    critic_optim: CriticOptimConfig = CriticOptimConfig()
    """Separate critic's optimiser."""
    sample_every: int = Field(10, gt=0)
    """Write sample generations to samples.jsonl every N steps."""
    n_logged_samples: int = Field(4, ge=0)
    """Samples written each time."""
    run: PPORunConfig = PPORunConfig()
    """Run directory and cadence, in PPO steps."""

    @model_validator(mode="after")
    def _check(self) -> "PPOConfig":
        if self.rollout_batch_size % self.minibatch_size:
            raise ValueError(f"rollout_batch_size {self.rollout_batch_size} must be a multiple of "
                             f"minibatch_size {self.minibatch_size}")
        if self.rollout_batch_size % self.rollout.group_size:
            raise ValueError(f"rollout_batch_size {self.rollout_batch_size} must be a multiple of "
                             f"rollout.group_size {self.rollout.group_size}")
        from rlhfkit.algos.advantages import get_estimator  # torch only, and only at validation time

        if get_estimator(self.advantage).needs_groups and self.rollout.group_size < 2:
            raise ValueError(f"advantage={self.advantage} compares responses to the same prompt: "
                             "set rollout.group_size >= 2")
        if self.reward.source == "rm" and not self.reward.rm_paths:
            raise ValueError("reward.source=rm needs reward.rm_paths")
        if self.reward.ensemble in ("mean_minus_std", "mean_minus_var") and self.reward.ensemble_coef is None:
            raise ValueError(f"reward.ensemble={self.reward.ensemble} needs reward.ensemble_coef (λ; Coste et al. "
                             "found 0.5 best for mean_minus_var)")
        if self.reward.source == "callable" and not self.reward.callable:
            raise ValueError("reward.source=callable needs reward.callable='module:function'")
        if self.value.init == "rm" and self.value.kind == "critic" and self.reward.source != "rm":
            raise ValueError("value.init=rm needs reward.source=rm")
        if self.value.pretrain_steps and self.value.kind != "critic":
            raise ValueError("value.pretrain_steps needs value.kind=critic (a shared trunk would move the policy)")
        if self.kl.ref_refresh_every and self.policy.lora.enabled:
            raise ValueError("kl.ref_refresh_every is not supported with LoRA (the reference is the base weights)")
        if self.kl.ref_refresh_every and self.kl.reference_path:
            raise ValueError("kl.ref_refresh_every would replace the model of kl.reference_path by the policy; "
                             "set one of them")
        return self
