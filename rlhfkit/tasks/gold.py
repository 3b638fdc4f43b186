"""The gold-reward components of the "reviews" task, as small pure functions.

Each component takes counts or numbers already extracted from the text (see
`reviews.ReviewsTask.gold_components`) and returns its share of the gold reward; the reward is
their plain sum. The weights live in `GoldWeights`; docs/task.md explains each formula and the
way it can be gamed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GoldWeights:
    """Scale of each gold component (chosen so the total has std ≈ 1 on SFT demonstrations)."""

    tone: float = 1.0
    """Weight of the tone term (right-tone minus wrong-tone adjectives)."""
    topic: float = 0.8
    """Weight of the topic term (on-topic minus off-topic nouns and verbs)."""
    fluency: float = 0.5
    """Weight of the fluency term (per-transition log-prob gap to generator text, nats)."""
    fluency_floor: float = -3.0
    """Lowest fluency gap counted, nats per transition (word salad saturates here)."""
    fluency_cap: float = 0.3
    """Highest fluency gap counted: beyond it, more predictable text earns nothing."""
    length: float = 0.4
    """Weight of the length term."""
    length_tolerance: float = 4.0
    """Words of deviation from the target at which the length penalty turns linear."""
    repetition: float = 2.0
    """Weight of the repeated-trigram fraction."""
    unfinished: float = 1.0
    """Penalty when generation stopped without EOS (truncated at the length limit)."""
    bad_ending: float = 0.5
    """Penalty when EOS came but the last word is not "."."""


def saturating(n: int) -> float:
    """Diminishing returns on a count: 1 − 2⁻ⁿ (0, 0.5, 0.75, 0.875, …, → 1)."""
    return 1.0 - 2.0 ** (-n)


def tone_score(n_right: int, n_wrong: int, weight: float) -> float:
    """w · (sat(n_right) − sat(n_wrong)), counts of *distinct* adjectives of the requested tone
    and of the opposite tone; in [−w, w]."""
    return weight * (saturating(n_right) - saturating(n_wrong))


def topic_score(n_on: int, n_off: int, weight: float) -> float:
    """w · (sat(n_on) − sat(n_off)), counts of *distinct* nouns/verbs of the prompt's topic and
    of any other topic (topic-free words count for neither); in [−w, w]."""
    return weight * (saturating(n_on) - saturating(n_off))


def fluency_score(mean_logprob: float, reference: float, weights: GoldWeights) -> float:
    """w · clip(m − m_ref, floor, cap): m is the mean log P(c_t | c_{t−1}) of the response's
    class transitions under the hidden class-bigram model (the first one conditioned on the
    prompt's last word), m_ref the same expectation for generator text."""
    gap = min(max(mean_logprob - reference, weights.fluency_floor), weights.fluency_cap)
    return weights.fluency * gap


def huber(x: float) -> float:
    """x²/2 for |x| ≤ 1, |x| − 1/2 beyond: quadratic near 0, linear (bounded slope) far out."""
    ax = abs(x)
    return 0.5 * x * x if ax <= 1.0 else ax - 0.5


def length_score(n_words: int, target: int, weights: GoldWeights) -> float:
    """−w · huber((n − target) / tol), n = response words (punctuation marks count as words)."""
    return -weights.length * huber((n_words - target) / weights.length_tolerance)


def repetition_fraction(words: list[str]) -> float:
    """1 − (distinct word trigrams / trigrams); 0 for fewer than 3 words. A sentence repeated
    once in a two-sentence text gives ≈ 0.5."""
    trigrams = list(zip(words, words[1:], words[2:]))
    if not trigrams:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def repetition_score(words: list[str], weight: float) -> float:
    """−w · repetition_fraction(words)."""
    return -weight * repetition_fraction(words)


def ending_score(finished: bool, last_word: str | None, weights: GoldWeights) -> float:
    """0 when the response ended with EOS right after ".", −bad_ending when EOS came elsewhere
    (or the response is empty), −unfinished when there was no EOS at all."""
    if not finished:
        return -weights.unfinished
    return 0.0 if last_word == "." else -weights.bad_ending
