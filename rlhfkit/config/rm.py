"""Config of the reward-model stage (`rlhfkit rm CONFIG key=value …` → `train_rm`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Section
from rlhfkit.config.common import ModelConfig, OptimConfig, RunConfig

InputFormat = Literal["auto", "chat", "plain", "pair"]
"""How prompt + response become one token sequence (see `rlhfkit.models.reward`)."""


class RMModelConfig(ModelConfig):
    """The backbone (an HF causal LM or encoder dir, an SFT run's `model/`, or a tiny Llama when
    `path` is empty) and the reward head on top of it."""

    num_heads: int | None = Field(None, gt=0)
    """Reward outputs, one per objective (e.g. helpfulness and safety); all are trained on the
    same labels unless the data says otherwise. Null = the saved model's when `path` is a saved
    RM directory (a different value is an error there: the head is trained), else 1."""
    input_format: InputFormat = "auto"
    """`chat`: the tokenizer's chat template; `plain`: prompt ids + response ids + EOS; `pair`:
    BERT-style `[CLS] prompt [SEP] response [SEP]` for encoders without EOS; `auto` picks chat
    when the tokenizer has a template, pair when it has no EOS but a separator token, else plain.
    With a saved RM directory as `path`, `auto` takes the saved format and a different one is an
    error (the model was trained on it)."""
    max_length: int | None = Field(None, gt=8)
    """Longest prompt+response in tokens. Longer inputs lose their oldest chat turns, then the
    start of what is left (the response's too when it alone is longer); with `pair` the longer
    segment loses its start. Null = a tiny model's `max_positions` (empty `path`; a larger value
    is an error), the saved model's when `path` is a saved RM directory (a value given here
    replaces it: truncation is a property of the inputs, not the weights), else 512 capped at the
    backbone's `max_position_embeddings` (a value past them is an error)."""
    freeze_embeddings: bool = False
    """Keep the token (and position) embeddings fixed."""
    freeze_layers: int = Field(0, ge=0)
    """Keep the lowest N transformer blocks fixed (0 = train all)."""

    @model_validator(mode="after")
    def _fits_tiny(self) -> "RMModelConfig":
        if not self.path and self.max_length is not None and self.max_length > self.tiny.max_positions:
            raise ValueError(f"model.max_length {self.max_length} exceeds the tiny model's "
                             f"model.tiny.max_positions {self.tiny.max_positions}")
        return self


class RMDataConfig(Section):
    """Preference data: files of pairs / rankings / ratings, or the built-in task labelled by a
    simulated annotator."""

    train_path: str | None = None
    """Preference file (JSONL / Parquet / datasets folder); empty = generate from `task`."""
    eval_path: str | None = None
    """Held-out preference file; default: `eval_fraction` of the training file."""
    kind: Literal["pair", "ranking", "rating"] = "pair"
    """Record kind of the files. Rankings keep all C(K,2) pairs of a prompt together; the ratings
    of one prompt become one ranking by each response's mean rating over annotators (equal means
    tie)."""
    eval_fraction: float = Field(0.05, gt=0, lt=1)
    """Held-out share when only `train_path` is given."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad records: stop with a file:line error, or skip and count them by reason."""
    task: str = "reviews"
    """Built-in task used when `train_path` is empty."""
    task_seed: int = 0
    """Seed of the task generator."""
    n_train: int = Field(2000, gt=0)
    """Training prompts to generate from the task (each with `k` responses)."""
    n_eval: int = Field(200, gt=0)
    """Held-out prompts to generate from the task."""
    k: int = Field(4, ge=2, le=9)
    """Responses per task prompt, ranked by the simulated annotator (C(k,2) pairs each)."""
    responses_from: str | None = None
    """Model directory (e.g. an SFT run's `model/`) sampling the k responses; empty = the task's
    own demonstration writer (no model needed)."""
    sample_temperature: float = Field(1.0, gt=0)
    """Sampling temperature when `responses_from` is set."""
    max_new_tokens: int = Field(48, gt=0)
    """Response length limit when `responses_from` is set."""
    annotator_temperature: float | None = Field(None, gt=0)
    """Noise τ of the simulated annotator; null = the task's default (≈75 % agreement)."""


class RMLossConfig(Section):
    """The preference loss and its regularisers."""

    type: Literal["bt", "pl"] = "bt"
    """`bt`: Bradley–Terry over all C(K,2) pairs of a prompt, divided by C(K,2) (InstructGPT);
    `pl`: Plackett–Luce likelihood of the whole ranking (equals BT when K = 2)."""
    margin: bool = False
    """Require r_c − r_r > m (Llama 2): m from the record's margin, else its strength level."""
    margin_scale: float = Field(1.0, ge=0)
    """Multiplier of the margins (BT only)."""
    centering_coef: float = Field(0.0, ge=0)
    """η of the zero-centring term η·E[(r_c + r_r)²] (Eisenstein et al.; TRL uses 0.01)."""
    lm_coef: float = Field(0.0, ge=0)
    """Weight of an LM loss on the chosen response: the loss becomes preference loss + lm_coef ·
    mean over groups of the mean token NLL of the top-ranked response given the prompt (Secrets of
    RLHF use 1). Needs a causal-LM backbone with its LM head (not an encoder such as MiniLM); the
    LM head is kept for training only, the saved RM directory does not include it. 0 = off."""


class EarlyStoppingConfig(Section):
    """Stop when the held-out metric stops improving."""

    enabled: bool = False
    """Turn early stopping on."""
    metric: Literal["eval/loss", "eval/accuracy"] = "eval/loss"
    """Metric to watch (loss: lower is better; accuracy: higher is better)."""
    patience: int = Field(3, gt=0)
    """Evaluations without an improvement of more than `min_delta` before stopping."""
    min_delta: float = Field(0.0, ge=0)
    """Smallest change that counts as an improvement."""
    keep_best: bool = True
    """Finish with the weights of the best evaluation rather than the last (works without
    `enabled` too)."""


class RMEvalConfig(Section):
    """Held-out evaluation."""

    batch_size: int = Field(64, gt=0)
    """Sequences per forward pass when scoring."""
    n_bins: int = Field(10, gt=1)
    """Bins of the calibration (reliability) table and ECE."""
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    """Early stopping and best-model selection."""


class NormalizeConfig(Section):
    """Reward normalisation after training: gain g and bias b per head so that r·g + b has the
    target mean and std on the normalisation samples (lm-human-preferences; rlhf-details b7)."""

    source: Literal["reference", "policy", "none"] = "reference"
    """`reference`: SFT reference responses (the task's demonstrations, or `reference_path`);
    `policy`: responses sampled from `policy_path`; `none`: keep g = 1, b = 0."""
    n_samples: int = Field(256, gt=1)
    """Prompts (one response each) the statistics are measured on."""
    policy_path: str | None = None
    """Policy model directory to sample from (source = policy)."""
    reference_path: str | None = None
    """SFT data file of reference responses (source = reference without a task)."""
    target_mean: float = 0.0
    """Mean of the normalised reward on the samples."""
    target_std: float = Field(1.0, gt=0)
    """Standard deviation (population, 1/N) of the normalised reward on the samples."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (source = policy)."""
    max_new_tokens: int = Field(48, gt=0)
    """Response length limit (source = policy)."""

    @model_validator(mode="after")
    def _paths(self) -> "NormalizeConfig":
        if self.source == "policy" and not self.policy_path:
            raise ValueError("normalize.source = policy needs normalize.policy_path")
        return self


class RMConfig(Section):
    """Reward-model training on preference groups (one prompt, K ranked responses)."""

    model: RMModelConfig = RMModelConfig()
    """Backbone and reward head."""
    data: RMDataConfig = RMDataConfig()
    """Training and held-out preferences."""
    loss: RMLossConfig = RMLossConfig()
    """Preference loss."""
    optim: OptimConfig = OptimConfig(lr=1e-4, warmup_ratio=0.03, min_lr_ratio=0.1)
    """Optimiser and schedule (cosine to 10 %, 3 % warm-up: Llama 2)."""
    batch_size: int = Field(16, gt=0)
    """Global prompts (groups of K responses) per optimiser step."""
    micro_batch_size: int = Field(16, gt=0)
    """Prompts per forward pass on one process (all their responses in one forward);
    gradient accumulation covers the rest."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data: 1, since RMs overfit after one (rlhf-details b5)."""
    max_steps: int | None = Field(None, gt=0)
    """Optimiser steps to run; overrides epochs."""
    length_grouping: bool = True
    """Batch prompts of similar token length together (less padding); the order stays random
    across batches."""
    length_group_batches: int = Field(32, gt=0)
    """Batches per sorting window of length grouping (larger = less padding, less randomness)."""
    eval: RMEvalConfig = RMEvalConfig()
    """Held-out evaluation."""
    normalize: NormalizeConfig = NormalizeConfig()
    """Reward normalisation after training."""
    run: RunConfig = RunConfig(out_dir="runs/rm", eval_every=50, save_every=50)
    """Run directory and cadence."""

    @model_validator(mode="after")
    def _consistent(self) -> "RMConfig":
        if self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} exceeds batch_size {self.batch_size}")
        if self.loss.type == "pl" and self.loss.margin:
            raise ValueError("loss.margin applies to the Bradley–Terry loss only (loss.type = bt)")
        if self.loss.lm_coef > 0 and self.model.input_format == "pair":
            raise ValueError("loss.lm_coef > 0 needs a causal-LM backbone; model.input_format = pair is for "
                             "encoders (set loss.lm_coef = 0)")
        return self
