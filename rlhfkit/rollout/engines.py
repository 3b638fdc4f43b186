"""Rollout engines behind one interface: Hugging Face `generate` on the policy itself (the
default) or vLLM (`rlhfkit.rollout.vllm_engine`, optional, CUDA only).

The PPO loop only calls `generate` and, after every optimiser update, `sync_weights`; it asks
`exact_logprobs` whether the behaviour log-probs may serve as PPO's old log-probs or must be
recomputed by the training forward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, ContextManager, Protocol, Sequence

from torch import nn

from rlhfkit.rollout.generate import Rollout, generate


@dataclass(frozen=True)
class SamplingSettings:
    """How every engine samples: one response per prompt, full vocabulary unless top_k / top_p say
    otherwise, stopping at `eos_id` or after `max_new_tokens`."""

    pad_id: int
    eos_id: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int


class RolloutEngine(Protocol):
    exact_logprobs: bool
    """True when `Rollout.logprobs` equal the training forward's log π/T (up to its own rounding),
    so PPO may take them as the old log-probs."""

    def generate(self, prompts: Sequence[Sequence[int]]) -> Rollout:
        """One response per prompt (token-id lists), seeded by torch's global RNG."""

    def sync_weights(self, lm: nn.Module) -> None:
        """Make the engine sample from `lm`'s current weights (the policy's causal LM)."""


class HFEngine:
    """`generate` on the policy's own LM: always current, so `sync_weights` has nothing to do."""

    exact_logprobs = True

    def __init__(self, lm: nn.Module, sampling: SamplingSettings, autocast: Callable[[], ContextManager]):
        self.lm, self.sampling, self.autocast = lm, sampling, autocast

    def generate(self, prompts: Sequence[Sequence[int]]) -> Rollout:
        self.lm.eval()
        with self.autocast():
            return generate(self.lm, prompts, **asdict(self.sampling))

    def sync_weights(self, lm: nn.Module) -> None:
        """Nothing to copy: generation runs on the training weights themselves."""
