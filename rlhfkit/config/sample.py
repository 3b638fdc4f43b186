"""Config of candidate sampling (`rlhfkit sample`): K responses per prompt from model variants."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Section
from rlhfkit.config.common import Precision
from rlhfkit.data.schemas import MAX_RANKED, MIN_RANKED


class ModelVariant(Section):
    """One source of candidates: a model directory with its own sampling settings. The same model
    may appear several times (e.g. the SFT model at T=0.7 and at T=1.0)."""

    path: str
    """Hugging Face model directory (e.g. `runs/sft/model`, or an earlier PPO run's `model/`)."""
    name: str | None = None
    """Name recorded as `provenance.model`; default: the path."""
    checkpoint: str | None = None
    """Checkpoint label recorded as `provenance.checkpoint` (a step or a path); default: the path."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (logits ÷ T)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold (1 = off)."""
    top_k: int = Field(0, ge=0)
    """Top-k truncation (0 = the full vocabulary)."""
    seed: int = 0
    """Seed of this variant's sampling (each batch derives its own seed from it and the batch
    index, so a variant's samples do not depend on the other variants)."""
    samples_per_prompt: int = Field(2, ge=1, le=MAX_RANKED)
    """Responses drawn from this variant for every prompt."""


class PromptSourceConfig(Section):
    """Where the prompts come from: the built-in task, or a file of `PromptRecord`s."""

    task: str | None = "reviews"
    """Built-in task that supplies the prompts (used when `path` is empty)."""
    task_seed: int = 0
    """Seed of the built-in task's generator."""
    split: Literal["train", "eval", "test"] = "train"
    """Task split to draw prompts from."""
    n: int = Field(256, gt=0)
    """Number of prompts (the first N of the split, or of the file)."""
    path: str | None = None
    """Prompt file (JSONL / Parquet / datasets folder of `PromptRecord`s); overrides the task."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad records in the prompt file: stop with a file:line error, or skip and count by reason."""


class OutputRunConfig(Section):
    """Run directory and devices of a stage that does not train (sampling, labelling)."""

    out_dir: str = "runs/sample"
    """Run directory: config.yaml, summary.json and the output dataset."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models run: `auto` = CUDA when available, else CPU."""
    precision: Precision = "fp32"
    """Weights dtype for models: fp32, or bf16 (GPU)."""
    num_threads: int | None = None
    """Torch CPU threads; null = torch's default."""
    progress: bool = True
    """Show a progress bar."""


class SampleConfig(Section):
    """Sample K distinct responses per prompt from one or several model variants, with provenance,
    into a `CandidateSet` JSONL for labelling (by a judge or in the annotation app)."""

    variants: list[ModelVariant] = Field(min_length=1)
    """Model variants to sample from; each contributes `samples_per_prompt` responses per prompt
    (K = their sum, 2–9)."""
    prompts: PromptSourceConfig = PromptSourceConfig()
    """Prompt source."""
    max_new_tokens: int = Field(48, gt=0)
    """Response length limit in tokens; a response that reaches it without EOS is `finished: false`."""
    batch_size: int = Field(64, gt=0)
    """Sequences per `generate` call."""
    drop_unfinished: bool = False
    """Drop responses cut at `max_new_tokens` (counted as `unfinished`); lm-h-p only asks labellers
    about responses that pass its truncation filter (rlhf-details a9). Empty responses are always
    dropped (counted as `empty`): a candidate must have text."""
    min_candidates: int = Field(MIN_RANKED, ge=1, le=MAX_RANKED)
    """Candidate sets with fewer distinct responses left are dropped (counted as
    `too_few_candidates`): a comparison needs two. At most K (checked at load)."""
    gold_scores: bool = False
    """Store the task's gold reward of each candidate in `meta['gold']` (the annotation app then
    treats the sets as gold items with a known answer); needs a built-in task, and a prompt file
    of that task's prompts (checked before sampling)."""
    output: str | None = None
    """Candidate-set JSONL to write; default: `candidates.jsonl` in the run directory."""
    run: OutputRunConfig = OutputRunConfig()
    """Run directory and devices."""

    @model_validator(mode="after")
    def _k_in_range(self) -> "SampleConfig":
        k = sum(v.samples_per_prompt for v in self.variants)
        if not MIN_RANKED <= k <= MAX_RANKED:
            raise ValueError(f"the variants draw K={k} responses per prompt in all; K must lie in "
                             f"{MIN_RANKED}..{MAX_RANKED} (sum of variants[*].samples_per_prompt)")
        if self.min_candidates > k:
            raise ValueError(f"min_candidates={self.min_candidates} exceeds K={k}, the responses drawn per "
                             "prompt (sum of variants[*].samples_per_prompt): every candidate set would be dropped")
        names = [v.name or v.path for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variants {repeated} share a name: give each variant a distinct `name` "
                             "(provenance.model must tell them apart)")
        if self.gold_scores and self.prompts.task is None:
            raise ValueError("gold_scores needs prompts.task (the gold reward comes from the task)")
        return self
