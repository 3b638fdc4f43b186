"""Config of labelling candidate sets with an automatic judge (`rlhfkit label-auto`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhfkit.config.base import Section
from rlhfkit.config.sample import OutputRunConfig

SIMULATED_TEMPERATURE = 0.85
"""Default τ of the simulated annotators: ≈75 % agreement with the gold order on SFT-demo pairs
(the value of `rlhfkit.tasks.DEFAULT_ANNOTATOR_TEMPERATURE`, repeated so configs stay light)."""

JudgeKind = Literal["simulated", "callable", "reward_model"]

PAIR_STRENGTH_FIELDS = ("strength_cuts", "strength_margins")
"""`JudgeLabelConfig` fields read only by pairwise labelling with margin=strength."""
PAIR_FIELDS = ("pairs", "margin", *PAIR_STRENGTH_FIELDS)
"""`JudgeLabelConfig` fields read only by pairwise labelling (`label_pairs`)."""
SCORING_FIELDS = ("noise_temperature", "rating_thresholds", "batch_size")
"""`JudgeConfig` fields read only by scoring judges (callable, reward model)."""
UNREAD_BY_KIND = {
    "simulated": ("callable", "reward_model", "head", *SCORING_FIELDS),
    "callable": ("temperature", "reward_model", "head"),
    "reward_model": ("temperature", "callable"),
}
"""`JudgeConfig` fields each judge kind ignores (a non-default value is refused)."""


def refuse_unread(section: Section, names: tuple[str, ...], where: str, prefix: str = "") -> None:
    """Refuse a non-default value of any field in `names`, which nothing reads `where`. Compared
    with the default, not `model_fields_set`: `load_config` lays every default into the data, so
    every field counts as set."""
    for name in names:
        value, default = getattr(section, name), type(section).model_fields[name].default
        if value != default:
            raise ValueError(f"{prefix}{name}={_shown(value)} is not read {where}; remove it (default "
                             f"{_shown(default)})")


def _shown(value) -> str:
    """A config value as a user writes it (tuples as YAML lists)."""
    return str(list(value)) if isinstance(value, tuple) else str(value)


class JudgeConfig(Section):
    """Who labels: the built-in task's simulated annotators, a Python scoring function, or a reward
    model. Scoring judges turn scores into labels (higher = better), optionally with noise. A field
    the chosen kind does not read (`UNREAD_BY_KIND`) must keep its default."""

    kind: JudgeKind = "simulated"
    """`simulated`: Bradley–Terry / Plackett–Luce annotators around the task's gold reward;
    `callable`: the function at `callable`; `reward_model`: the reward model at `reward_model`."""
    n_annotators: int = Field(1, gt=0)
    """Distinct annotators (ids `sim-0`, `sim-1`, … / `fn-0`, … / `rm-0`, …), each with its own noise
    stream; sets are dealt to them in turn (see `labels_per_set`)."""
    temperature: float = Field(SIMULATED_TEMPERATURE, gt=0)
    """τ of the simulated annotators: P(a ≻ b) = σ((g_a − g_b)/τ) with g the gold reward."""
    tie_eps: float = Field(0.0, ge=0)
    """Rankings: responses whose gold (simulated) or score (scoring judges) differ by at most this
    share a rank; noiseless scoring judges also call a pair within it a tie (with
    `noise_temperature` their pair and ranking labels are drawn, never tied)."""
    callable: str | None = None
    """`module:function` scoring a list of (prompt, response, finished) tuples → list of floats
    (higher = better); the module must be importable (on `sys.path`)."""
    reward_model: str | None = None
    """Reward-model directory (`RUN/model` of `rlhfkit rm`)."""
    head: int = Field(0, ge=0)
    """Reward-model head to score with (multi-head models)."""
    noise_temperature: float | None = Field(None, gt=0)
    """Scoring judges: draw labels with Bradley–Terry / Plackett–Luce noise of this temperature on
    the scores (a noisy simulated annotator around the scorer); null = noiseless (argmax)."""
    rating_thresholds: tuple[float, float, float, float] | None = None
    """Scoring judges' rating cuts: 1 + the number of thresholds below the (noisy) score; null = the
    quintiles of all scores in this run (each rating given to about a fifth of the candidates)."""
    batch_size: int = Field(64, gt=0)
    """Candidates per call to the scoring function or reward model."""

    @model_validator(mode="after")
    def _source_given(self) -> "JudgeConfig":
        if self.kind == "callable" and not self.callable:
            raise ValueError("judge.kind=callable needs judge.callable (module:function)")
        if self.kind == "reward_model" and not self.reward_model:
            raise ValueError("judge.kind=reward_model needs judge.reward_model (a model directory)")
        if self.rating_thresholds is not None and list(self.rating_thresholds) != sorted(self.rating_thresholds):
            raise ValueError("judge.rating_thresholds must be increasing")
        refuse_unread(self, UNREAD_BY_KIND[self.kind], f"with judge.kind={self.kind}", prefix="judge.")
        return self


class JudgeLabelConfig(Section):
    """Label candidate sets with a judge into preference records (pairs, rankings or ratings)."""

    candidates: str
    """Candidate-set JSONL written by `rlhfkit sample` (or any file of `CandidateSet`s)."""
    mode: Literal["pairwise", "ranking", "rating"] = "pairwise"
    """Label type: `PreferencePair`s, one K-way `Ranking` per set (ties allowed), or a 1–5 `Rating`
    per candidate."""
    pairs: Literal["all", "one"] = "all"
    """Pairwise: label every pair of a set's candidates (K(K−1)/2), or one random pair per set.
    This and the margin fields below must keep their defaults in the other modes, which ignore
    them."""
    labels_per_set: int = Field(1, gt=0)
    """Annotators labelling each set (≤ judge.n_annotators); > 1 gives overlap for agreement."""
    margin: Literal["none", "strength", "score_gap"] = "none"
    """Pairwise: the pair margin: none; `strength` = `strength_margins[level]`, the level cut from
    the judge's P(chosen ≻ rejected) at `strength_cuts`; `score_gap` = |s_chosen − s_rejected|
    (scoring judges)."""
    strength_cuts: tuple[float, float, float] = (0.6, 0.75, 0.9)
    """margin=strength: P(chosen ≻ rejected) at which the strength level rises to 1, 2 and 3
    (0 = negligible)."""
    strength_margins: tuple[float, float, float, float] = (0.0, 1 / 3, 2 / 3, 1.0)
    """margin=strength: the margin per strength level 0..3 (Llama 2's "margin small"; rlhf-details
    b4)."""
    judge: JudgeConfig = JudgeConfig()
    """The judge."""
    task: str | None = "reviews"
    """Built-in task: its gold reward drives simulated annotators and the summary's agreement with
    the noiseless gold order; null = no gold (only with scoring judges)."""
    task_seed: int = 0
    """Seed of the built-in task."""
    seed: int = 0
    """Seed of the shown orders, the random pair choice and the annotators' noise."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad candidate sets (or sets with < 2 candidates for pairs and rankings): stop with a
    file:line error, or skip and count by reason."""
    output: str | None = None
    """Preference JSONL to write; default: `labels.jsonl` in the run directory."""
    run: OutputRunConfig = OutputRunConfig(out_dir="runs/label")
    """Run directory and devices (for a reward-model judge)."""

    @model_validator(mode="after")
    def _consistent(self) -> "JudgeLabelConfig":
        if self.labels_per_set > self.judge.n_annotators:
            raise ValueError(f"labels_per_set={self.labels_per_set} exceeds judge.n_annotators="
                             f"{self.judge.n_annotators}")
        if self.judge.kind == "simulated" and self.task is None:
            raise ValueError("judge.kind=simulated needs `task` (the annotators' gold reward)")
        if self.margin == "score_gap" and self.judge.kind == "simulated":
            raise ValueError("margin=score_gap needs a scoring judge (callable or reward_model)")
        if list(self.strength_cuts) != sorted(self.strength_cuts) or not 0.5 <= self.strength_cuts[0]:
            raise ValueError("strength_cuts must be increasing probabilities ≥ 0.5")
        self._no_unread_fields()
        return self

    def _no_unread_fields(self) -> None:
        """Refuse pair options the labelling will not read (`label_pairs` alone reads them), and
        rating cuts outside rating mode."""
        if self.mode != "rating":
            refuse_unread(self.judge, ("rating_thresholds",), f"with mode={self.mode}", prefix="judge.")
        if self.mode != "pairwise":
            refuse_unread(self, PAIR_FIELDS, f"with mode={self.mode}")
        elif self.margin != "strength":
            refuse_unread(self, PAIR_STRENGTH_FIELDS, f"with margin={self.margin}")
