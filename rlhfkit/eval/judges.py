"""Judges: which of two responses to a prompt is better, as a probability.

One small protocol serves win rates (evaluation) and automatic labelling:

    judge.prefer(prompt, a, b, finished_a=True, finished_b=True) -> P(a is better) in [0, 1]

with 0.5 meaning a tie (or "cannot tell"). Scoring judges (gold reward, reward model, a Python
function) also expose `scores(items)` over `(prompt, response, finished)` tuples, so callers that
judge many responses can score them in one batch instead of pair by pair.

A judge that reads both responses at once (an LLM asked "A or B?") may favour a position. Asking
in both orders and averaging, `judge_both_orders`, cancels any bias that depends only on the
position: if prefer(x, y) = q(x, y) + β with q antisymmetric (q(x, y) = 1 − q(y, x)), the
average is q(a, b) + β/2 − β/2 = q(a, b). The evaluation stage should always judge this way.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rlhfkit.models.text import plain_prompt_text

Item = tuple[Any, str, bool]
"""(prompt, response, finished): the prompt as in the record (text or chat messages)."""

ScoreFn = Callable[[list[Item]], Sequence[float]]
"""A scoring function: one float per item, higher = better (the `judge.callable` signature)."""


class Judge(Protocol):
    """Anything that says how likely response `a` is better than `b` for `prompt`."""

    name: str
    """Short description recorded with judgements (e.g. `gold:reviews`, `rm:runs/rm/model`)."""

    def prefer(self, prompt: Any, a: str, b: str, finished_a: bool = True, finished_b: bool = True) -> float:
        """P(a is better than b) in [0, 1]; 0.5 = tie."""
        ...


def preference_from_scores(score_a: float, score_b: float, temperature: float | None = None,
                           tie_eps: float = 0.0) -> float:
    """P(a ≻ b) from two scores.

    Hard (temperature None): 1 if s_a − s_b > ε, 0 if s_a − s_b < −ε, else ½ (a tie).
    Soft: σ((s_a − s_b)/τ), the Bradley–Terry probability (Bradley & Terry 1952).
    """
    gap = score_a - score_b
    if temperature is None:
        return 1.0 if gap > tie_eps else 0.0 if gap < -tie_eps else 0.5
    z = gap / temperature
    # Split by sign so exp never overflows.
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _check_scores(scores: Sequence[float], n: int, name: str) -> list[float]:
    out = [float(s) for s in scores]
    if len(out) != n:
        raise ValueError(f"judge {name!r} returned {len(out)} scores for {n} responses")
    if not all(math.isfinite(s) for s in out):
        raise ValueError(f"judge {name!r} returned a non-finite score: {out}")
    return out


def _prefer_by_scores(judge, prompt: Any, a: str, b: str, finished_a: bool, finished_b: bool) -> float:
    """`prefer` of a judge that scores each response on its own (`judge.scores`)."""
    s_a, s_b = judge.scores([(prompt, a, finished_a), (prompt, b, finished_b)])
    return preference_from_scores(s_a, s_b, judge.temperature, judge.tie_eps)


class GoldJudge:
    """The built-in task's gold reward: hard (noiseless order) by default, or Bradley–Terry soft
    with `temperature` — the expected vote of a simulated annotator of that τ."""

    def __init__(self, task, temperature: float | None = None, tie_eps: float = 0.0) -> None:
        self.task, self.temperature, self.tie_eps = task, temperature, tie_eps
        self.name = f"gold:{task.name}"

    def scores(self, items: list[Item]) -> list[float]:
        return self.task.gold_rewards([plain_prompt_text(p) for p, _, _ in items], [r for _, r, _ in items],
                                      [f for _, _, f in items])

    def prefer(self, prompt: Any, a: str, b: str, finished_a: bool = True, finished_b: bool = True) -> float:
        return _prefer_by_scores(self, prompt, a, b, finished_a, finished_b)


class RewardModelJudge:
    """A reward model (`rlhfkit.models.reward`): scores of head `head`, normalised as stored."""

    def __init__(self, rm, head: int = 0, temperature: float | None = None, tie_eps: float = 0.0,
                 name: str = "rm", batch_size: int = 64) -> None:
        self.rm, self.head, self.temperature, self.tie_eps = rm, head, temperature, tie_eps
        self.name, self.batch_size = name, batch_size

    def scores(self, items: list[Item]) -> list[float]:
        out = self.rm.score_texts([p for p, _, _ in items], [r for _, r, _ in items], [f for _, _, f in items],
                                  batch_size=self.batch_size)
        return _check_scores(out[:, self.head].tolist(), len(items), self.name)

    def prefer(self, prompt: Any, a: str, b: str, finished_a: bool = True, finished_b: bool = True) -> float:
        return _prefer_by_scores(self, prompt, a, b, finished_a, finished_b)


class CallableJudge:
    """Any Python scoring function `fn(items) -> floats` (see `ScoreFn`); load one by import path
    with `load_callable("module:function")`."""

    def __init__(self, fn: ScoreFn, temperature: float | None = None, tie_eps: float = 0.0,
                 name: str | None = None) -> None:
        self.fn, self.temperature, self.tie_eps = fn, temperature, tie_eps
        self.name = name or f"fn:{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"

    def scores(self, items: list[Item]) -> list[float]:
        return _check_scores(self.fn(list(items)), len(items), self.name)

    def prefer(self, prompt: Any, a: str, b: str, finished_a: bool = True, finished_b: bool = True) -> float:
        return _prefer_by_scores(self, prompt, a, b, finished_a, finished_b)


class SimulatedJudge:
    """One noisy vote of a simulated annotator (`rlhfkit.tasks.SimulatedAnnotator`): 1 or 0."""

    def __init__(self, annotator) -> None:
        self.annotator = annotator
        self.name = annotator.annotator_id

    def prefer(self, prompt: Any, a: str, b: str, finished_a: bool = True, finished_b: bool = True) -> float:
        winner, _ = self.annotator.compare(plain_prompt_text(prompt), a, b, finished_a, finished_b)
        return 1.0 if winner == 0 else 0.0


def judge_both_orders(judge: Judge, prompt: Any, a: str, b: str, finished_a: bool = True,
                      finished_b: bool = True) -> float:
    """P(a ≻ b) asked as (a, b) and as (b, a), averaged: ½[prefer(a, b) + 1 − prefer(b, a)].

    Removes any position bias that adds the same amount to whichever response is shown first
    (see the module docstring); an unbiased judge's answer is unchanged in expectation.
    """
    forward = judge.prefer(prompt, a, b, finished_a, finished_b)
    backward = judge.prefer(prompt, b, a, finished_b, finished_a)
    return 0.5 * (forward + 1.0 - backward)


def load_callable(spec: str) -> Callable:
    """The object named by `module:attribute` (the attribute may be dotted, `module:Class.method`).

    Errors say which part failed: a missing colon, a module that cannot be imported (with the
    import error), a missing attribute, or an object that is not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"callable {spec!r} must be written 'module:function' (e.g. 'my_judges:length_score')")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"callable {spec!r}: cannot import module {module_name!r} ({exc}); is it on "
                         "PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"callable {spec!r}: {getattr(obj, '__name__', module_name)!r} has no attribute "
                             f"{part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"callable {spec!r}: {type(obj).__name__} object is not callable")
    return obj
