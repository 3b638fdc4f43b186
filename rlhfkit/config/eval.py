"""Config of `rlhfkit eval`: compare models (SFT, PPO checkpoints, best-of-n samplers) on held-out
prompts by reward-model score, gold reward, KL to a reference, judged win rate and forgetting."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Section
from rlhfkit.config.sample import OutputRunConfig, PromptSourceConfig


class EvalPromptsConfig(PromptSourceConfig):
    """Held-out prompts: a task split (the `test` split by default), or a prompt file."""

    split: Literal["train", "eval", "test"] = "test"
    """Task split to draw prompts from (keep it disjoint from the prompts the models trained on)."""


class EvalModelSpec(Section):
    """One entry of the comparison: a model, or a best-of-n sampler over a model."""

    name: str
    """Label in tables, samples and the report (e.g. `sft`, `ppo`, `bon16`)."""
    path: str
    """Hugging Face model directory, or a run directory holding one in `model/`."""
    best_of_n: int = Field(1, ge=1)
    """n > 1: a best-of-n sampler over this model — n samples per prompt, the one `bon_scorer`
    ranks highest is kept. Its KL to the base model is the analytic log n − (n−1)/n."""
    bon_scorer: Literal["reward_model", "gold"] = "reward_model"
    """What ranks the n samples: the config's `reward_model` (the proxy), or the task's gold reward
    (an oracle ceiling)."""


class DecodingSpec(Section):
    """One way of decoding every model's responses."""

    greedy: bool = False
    """Greedy (argmax) decoding; `temperature` is then ignored and recorded as 0."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (logits ÷ T); the KL to the reference is measured at this temperature."""

    @property
    def label(self) -> str:
        """Key of this decoding in the summary: `greedy` or `T=<temperature>`."""
        return "greedy" if self.greedy else f"T={self.temperature:g}"


class EvalJudgeConfig(Section):
    """Who decides the pairwise comparisons behind the win rates. Every comparison is judged in both
    presentation orders and averaged, so a position bias cancels; ties count ½."""

    kind: Literal["gold", "reward_model", "callable"] = "gold"
    """`gold`: the task's gold reward (an oracle; needs task prompts); `reward_model`: the reward
    model at `reward_model`; `callable`: the function at `callable`."""
    reward_model: str | None = None
    """Reward-model directory for kind=reward_model; default: the top-level `reward_model`."""
    callable: str | None = None
    """`module:name` of a scoring function over a list of (prompt, response, finished) tuples →
    floats (higher = better), or of a class (built with no arguments) with a method
    `prefer(prompt, a, b, finished_a, finished_b)` → P(a is better): a pairwise judge, e.g. an LLM
    asked "A or B?"."""
    head: int = Field(0, ge=0)
    """Reward-model head that judges (multi-head models)."""
    temperature: float | None = Field(None, gt=0)
    """Scoring judges: null = hard verdicts (higher score wins, equal scores tie); a number τ =
    soft verdicts σ((s_a − s_b)/τ)."""
    tie_eps: float = Field(0.0, ge=0)
    """Scoring judges, hard verdicts: scores within this distance are a tie (½)."""


class PerplexityConfig(Section):
    """Held-out perplexity on SFT data: the forgetting (alignment-tax) check."""

    n: int = Field(256, ge=0)
    """Held-out demonstrations to score (0 = skip)."""
    path: str | None = None
    """SFT data file (`SFTExample` records); default: the task's `eval` demonstrations."""
    max_seq_len: int = Field(512, gt=8)
    """Longer prompt+response sequences are skipped (also capped at the model's context length)."""


class EvalConfig(Section):
    """Evaluate a set of models against a baseline on held-out prompts; writes a run directory with
    `config.yaml`, `summary.json` and side-by-side responses in `samples.jsonl`."""

    models: list[EvalModelSpec] = Field(min_length=1)
    """Models to compare (the baseline among them)."""
    baseline: str | None = None
    """Name of the model every other is compared against; default: the first."""
    reference: str | None = None
    """Model directory the KL is measured against; default: the baseline's model."""
    reward_model: str | None = None
    """Reward-model directory (`RUN/model` of `rlhfkit rm`): RM score of every response (each head)
    and the ranking of best-of-n samplers; null = no RM scores."""
    prompts: EvalPromptsConfig = EvalPromptsConfig()
    """Held-out prompts: a task split, or a prompt file. The gold reward is reported when the
    prompts come from the task."""
    decodings: list[DecodingSpec] = [DecodingSpec(greedy=True), DecodingSpec(temperature=1.0)]
    """Decoding settings; every metric is reported per decoding (the KL only for sampled ones)."""
    max_new_tokens: int = Field(48, gt=0)
    """Response length limit in tokens (a response that reaches it without EOS is unfinished)."""
    judge: EvalJudgeConfig = EvalJudgeConfig()
    """Judge of the win rates."""
    all_pairs: bool = True
    """With more than two models, also judge every pair and fit Bradley–Terry scores."""
    perplexity: PerplexityConfig = PerplexityConfig()
    """Held-out perplexity on SFT data."""
    distinct_n: list[int] = [1, 2]
    """n of the distinct-n diversity metrics (word n-grams)."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Coverage of the win-rate intervals."""
    batch_size: int = Field(64, gt=0)
    """Sequences per generate / forward call: generation, KL, perplexity and reward-model scoring."""
    seed: int = 0
    """Seed of the sampling (each model and decoding derives its own, so adding a model leaves the
    others' samples unchanged)."""
    run: OutputRunConfig = OutputRunConfig(out_dir="runs/eval")
    """Run directory and devices."""

    @model_validator(mode="after")
    def _consistent(self) -> "EvalConfig":
        names = [m.name for m in self.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"models {repeated} share a name; give each a distinct `name`")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the models: {', '.join(names)}")
        task_prompts = self.prompts.task is not None and self.prompts.path is None
        if self.judge.kind == "gold" and not task_prompts:
            raise ValueError("judge.kind=gold needs prompts from a built-in task (prompts.task, no prompts.path)")
        if self.judge.kind == "reward_model" and not (self.judge.reward_model or self.reward_model):
            raise ValueError("judge.kind=reward_model needs judge.reward_model or reward_model")
        if self.judge.kind == "callable" and not self.judge.callable:
            raise ValueError("judge.kind=callable needs judge.callable (module:function)")
        for m in self.models:
            if m.best_of_n > 1 and m.bon_scorer == "reward_model" and not self.reward_model:
                raise ValueError(f"model {m.name!r}: best_of_n with bon_scorer=reward_model needs reward_model")
            if m.best_of_n > 1 and m.bon_scorer == "gold" and not task_prompts:
                raise ValueError(f"model {m.name!r}: bon_scorer=gold needs prompts from a built-in task")
        if any(n < 1 for n in self.distinct_n):
            raise ValueError(f"distinct_n must list n-gram sizes ≥ 1, got {self.distinct_n}")
        if not self.decodings:
            raise ValueError("decodings must list at least one decoding")
        labels = [d.label for d in self.decodings]
        if len(set(labels)) < len(labels):
            raise ValueError(f"decodings {labels} repeat a label (greedy ignores temperature): their results "
                             "would overwrite each other")
        sampled = any(not d.greedy for d in self.decodings)
        for m in self.models:
            if m.best_of_n > 1 and not sampled:
                raise ValueError(f"model {m.name!r}: best_of_n needs a sampled decoding (greedy gives n equal "
                                 "samples), and every decoding is greedy")
            if m.best_of_n > 1 and m.name == self.baseline_name and any(d.greedy for d in self.decodings):
                raise ValueError(f"baseline {m.name!r} is a best-of-n sampler, which has no greedy responses: "
                                 "choose another baseline or drop the greedy decoding")
        return self

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.models[0].name
