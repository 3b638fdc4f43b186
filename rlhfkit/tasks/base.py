"""What a built-in task offers: prompts, demonstrations, tokenizer text and a gold reward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rlhfkit.data.schemas import PromptRecord, SFTExample


class Task(Protocol):
    """A task with a programmatic gold reward, deterministic from its seed."""

    name: str
    """Registry name."""
    seed: int
    """Seed every prompt, demonstration and split derives from."""
    max_response_words: int
    """Longest demonstration in words: generation limits should allow at least this."""

    def prompts(self, split: str, n: int) -> list[PromptRecord]:
        """The first `n` prompts of a split (`train`, `eval`, `test`; disjoint)."""
        ...

    def sft_examples(self, n: int, split: str = "train") -> list[SFTExample]:
        """`n` demonstrations of mixed quality."""
        ...

    def corpus(self, n_lines: int) -> list[str]:
        """Text lines for training a tokenizer."""
        ...

    def gold_reward(self, prompt: str, response: str, finished: bool = True) -> float:
        """Gold reward of one response (`finished` = generation ended with EOS)."""
        ...

    def gold_rewards(self, prompts: Sequence[str], responses: Sequence[str],
                     finished: Sequence[bool] | None = None) -> list[float]:
        """Gold rewards of aligned lists."""
        ...

    def gold_components(self, prompt: str, response: str,
                        finished: bool = True) -> dict[str, float]:
        """Named components that sum to the gold reward."""
        ...

    def rating_thresholds(self) -> tuple[float, ...]:
        """Four increasing gold levels that cut the 1–5 rating scale."""
        ...
