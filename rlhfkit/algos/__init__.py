"""Pure RLHF math over tensors: no models, no I/O, no config objects; imports torch and the
stdlib only. Each function's docstring gives its formula, shapes, mask polarity and source."""

from rlhfkit.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    EstimatorSpec,
    discounted_returns,
    gae,
    get_estimator,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlhfkit.algos.bon import best_of_n_kl, best_of_n_unbiased, best_of_n_weights
from rlhfkit.algos.calibration import (
    ReliabilityTable,
    expected_calibration_error,
    pairwise_accuracy,
    reliability_table,
)
from rlhfkit.algos.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_penalty,
)
from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_from_logits
from rlhfkit.algos.masking import (
    AGG_MODES,
    aggregate_token_loss,
    last_true_mask,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rlhfkit.algos.ppo_losses import (
    PolicyStats,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_bonus,
    explained_variance,
    kl_loss,
)
from rlhfkit.algos.rewards import (
    apply_missing_eos_penalty,
    clip_rewards,
    per_token_rewards,
    reward_normalization,
)
from rlhfkit.algos.rm_losses import (
    COMBINE_MODES,
    MARGIN_LARGE,
    MARGIN_SMALL,
    bradley_terry_loss,
    centering_loss,
    combine_rewards,
    grouped_pairwise_loss,
    plackett_luce_loss,
    strength_to_margin,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGG_MODES", "COMBINE_MODES", "KL_ESTIMATORS", "MARGIN_LARGE", "MARGIN_SMALL",
    "AdaptiveKLController", "EstimatorSpec", "FixedKLController", "KLController", "PolicyStats",
    "ReliabilityTable",
    "aggregate_token_loss", "apply_missing_eos_penalty", "best_of_n_kl", "best_of_n_unbiased",
    "best_of_n_weights", "bradley_terry_loss", "centering_loss", "clip_rewards", "clipped_policy_loss",
    "clipped_value_loss", "combine_rewards", "discounted_returns", "entropy_bonus", "entropy_from_logits",
    "expected_calibration_error", "explained_variance", "gae", "get_estimator", "grouped_pairwise_loss",
    "grpo_advantages", "kl_loss", "kl_penalty", "last_true_mask", "logprobs_from_logits", "masked_mean",
    "masked_sum", "masked_var", "masked_whiten", "pairwise_accuracy", "per_token_rewards",
    "plackett_luce_loss", "reinforce_pp_advantages", "reliability_table", "reward_normalization",
    "rloo_advantages", "strength_to_margin",
]
