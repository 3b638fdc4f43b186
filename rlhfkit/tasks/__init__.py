"""Built-in tasks with a programmatic gold reward, so the whole RLHF loop can be run and checked
offline: prompts, mixed-quality demonstrations, tokenizer text, the gold reward and simulated
annotators whose label noise (and hence the best reachable RM accuracy) is known exactly.

    task = get_task("reviews", seed=0)
    annotator = SimulatedAnnotator(task)          # Bradley–Terry noise at the default τ
"""

from __future__ import annotations

from typing import Any

from rlhfkit.tasks.annotators import (
    DEFAULT_ANNOTATOR_TEMPERATURE,
    SimulatedAnnotator,
    bayes_ceiling,
    fit_temperature,
    noiseless_agreement,
)
from rlhfkit.tasks.base import Task
from rlhfkit.tasks.gold import GoldWeights
from rlhfkit.tasks.reviews import ReviewsTask

TASKS: dict[str, type] = {"reviews": ReviewsTask}
"""Task name → task class (constructed as `cls(seed=..., **kwargs)`)."""


def get_task(name: str, seed: int = 0, **kwargs: Any) -> Task:
    """Construct a registered task; the error lists the valid names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    return TASKS[name](seed=seed, **kwargs)


__all__ = [
    "DEFAULT_ANNOTATOR_TEMPERATURE",
    "GoldWeights",
    "ReviewsTask",
    "SimulatedAnnotator",
    "TASKS",
    "Task",
    "bayes_ceiling",
    "fit_temperature",
    "get_task",
    "noiseless_agreement",
]
