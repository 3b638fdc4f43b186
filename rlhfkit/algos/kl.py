"""Per-token KL estimators and the KL-coefficient controllers.

Convention (Schulman 2020, "Approximating KL Divergence"): tokens are sampled from the policy π,
and r = π_ref(y) / π(y), i.e. log r = ref_logprobs − logprobs. Each estimator is a per-sample
quantity whose expectation under π approximates KL(π ‖ π_ref):

- k1 = −log r = logπ − logπ_ref          unbiased, high variance, negative about half the time;
- k2 = ½ (log r)²                         biased (third order in log r, small when π ≈ π_ref), low variance;
- k3 = (r − 1) − log r                    unbiased, low variance, always ≥ 0.

Where the KL goes matters more than which estimator (rlhf-details c′ k3): on-policy, the gradient
of "k2 as a loss" equals the REINFORCE gradient of "k1 in the reward" (both are ∇KL(π‖π_ref)),
while "k3 as a loss" (GRPO) has gradient −E_π[r ∇logπ] = ∇KL(π_ref‖π), the *forward* KL.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logπ − logπ_ref (elementwise, any shape)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (logπ − logπ_ref)² (elementwise, any shape)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r with log r = logπ_ref − logπ (elementwise, any shape).

    `expm1` keeps r − 1 accurate when r ≈ 1, where the two terms nearly cancel. No clamping: a
    log-ratio large enough to overflow exp means the policy has left the reference entirely, and
    a silent clamp would hide that (and change the gradient).
    """
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}
"""Name → estimator(logprobs, ref_logprobs) → per-token estimate, all with the same signature."""


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token KL estimate of KL(π ‖ π_ref) with the named estimator (see module docstring).

    Shapes: `logprobs`, `ref_logprobs` (B, T) (any matching shape) → same shape. Masking is the
    caller's job (see `per_token_rewards`, `kl_loss`).
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}") from None
    return fn(logprobs, ref_logprobs)


class KLController(Protocol):
    """What the PPO loop needs from a KL-coefficient controller."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedKLController:
    """β stays at `kl_coef` forever."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019's proportional controller that steers the KL towards `target`.

    e = clip(KL / target − 1, −0.2, 0.2);   β ← β · (1 + e · n_steps / horizon)

    `current_kl` is the sequence-level KL (nats per response, the k1 sum over tokens averaged over
    the batch); `n_steps` the number of episodes in the batch; `horizon` is in episodes (10,000 in
    lm-human-preferences), so at batch 512 β moves by at most ×1.0102 per update — scale the horizon
    to the episode budget of a short run (rlhf-details c6).
    Source: lm-human-preferences `train_policy.py: AdaptiveKLController`.
    """

    MAX_PROPORTIONAL_ERROR = 0.2
    """The clip on KL/target − 1, so one bad batch cannot swing β by more than 20% of a step."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"need init_kl_coef >= 0, target > 0, horizon > 0; got {init_kl_coef}, {target}, {horizon}"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        limit = self.MAX_PROPORTIONAL_ERROR
        error = min(max(float(current_kl) / self.target - 1.0, -limit), limit)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Only β is state; target and horizon come from the config on resume."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
