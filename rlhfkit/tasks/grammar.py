"""The hidden generator of the "reviews" language and the hidden class-bigram fluency model.

Text is a sequence of sentences, each drawn independently from the weighted templates in
`lexicon.TEMPLATES` and filled with words according to a writer `Style` (topic, tone, topic
drift). The fluency model is the class-bigram chain those templates induce, derived exactly
(not estimated from samples) and smoothed, so every word sequence gets a finite score:

    P(c' | c) = (1 − ε) · q(c, c') / Σ_c'' q(c, c'') + ε / |C|

where q(c, c') is the expected number of c → c' transitions per sentence (the "." → first-class
transition included, since sentences follow one another) and |C| counts the UNK class (every
word outside the language), whose own row copies the "." row.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from rlhfkit.tasks import lexicon

SMOOTHING = 0.02
"""ε above: the probability mass spread uniformly over all classes, so word salad stays finite."""

GENERIC_NOUN_P = 0.25
"""Probability that a noun slot takes a topic-free noun instead of a topic noun."""
GENERIC_VERB_P = 0.2
"""Probability that a verb slot takes a topic-free verb."""
TONE_WORD_P = 0.9
"""Probability that a predicative adjective carries the writer's tone (else it is neutral)."""
ATTRIBUTIVE_NEUTRAL_P = 0.7
"""Probability that an attributive adjective is neutral (else it carries the writer's tone)."""


@dataclass(frozen=True)
class Style:
    """How one writer fills template slots."""

    topic: str
    """The topic whose nouns and verbs are used by default."""
    tone: str
    """`positive`, `negative`, `mixed` (each tone adjective a coin flip) or `neutral`."""
    drift_topic: str | None = None
    """Another topic that some sentences switch to (off-topic writing)."""
    drift_p: float = 0.0
    """Probability that a sentence is about `drift_topic` instead of `topic`."""


def expand_templates() -> list[tuple[float, tuple[str, ...]]]:
    """Every concrete slot sequence with its probability (optional slots in or out)."""
    total = sum(weight for weight, _ in lexicon.TEMPLATES)
    variants = []
    for weight, slots in lexicon.TEMPLATES:
        optional = [i for i, slot in enumerate(slots) if slot.endswith("?")]
        for keep in itertools.product((True, False), repeat=len(optional)):
            prob = weight / total
            dropped = set()
            for i, kept in zip(optional, keep):
                prob *= lexicon.OPTIONAL_P if kept else 1.0 - lexicon.OPTIONAL_P
                if not kept:
                    dropped.add(i)
            concrete = tuple(s.rstrip("?") for i, s in enumerate(slots) if i not in dropped)
            variants.append((prob, concrete))
    return variants


def slot_class(slot: str) -> str:
    """Grammatical class of a template role."""
    return lexicon.SLOT_CLASS.get(slot, slot)


def class_bigram_logprobs() -> tuple[list[list[float]], float]:
    """The hidden fluency model: log P(c' | c) as a |C|×|C| nested list (indices follow
    `lexicon.CLASSES`), and the expected per-transition log-probability of generator text,
    Σ q(c, c') log P(c' | c) / Σ q(c, c'), which is the fluency reference level."""
    index = {name: i for i, name in enumerate(lexicon.CLASSES)}
    n = len(lexicon.CLASSES)
    counts = [[0.0] * n for _ in range(n)]
    period = index["PERIOD"]
    for prob, slots in expand_templates():
        classes = [index[slot_class(s)] for s in slots]
        counts[period][classes[0]] += prob
        for prev, cur in zip(classes, classes[1:]):
            counts[prev][cur] += prob
    logprobs, expected, mass = [], 0.0, 0.0
    for row in counts:
        total = sum(row) or 1.0  # the UNK row, replaced below
        probs = [(1 - SMOOTHING) * c / total + SMOOTHING / n for c in row]
        logprobs.append([math.log(p) for p in probs])
        expected += sum(c * math.log(p) for c, p in zip(row, probs))
        mass += sum(row)
    # The generator never emits UNK, so its row has no counts: after an unknown word the chain
    # restarts as at a sentence boundary (a uniform row would make UNK → UNK likely, and text
    # made only of unknown words fairly "fluent").
    logprobs[index["UNK"]] = list(logprobs[period])
    return logprobs, expected / mass


class Writer:
    """Samples sentences and reviews from the templates; pure Python `random` for speed."""

    def __init__(self) -> None:
        self.variants = expand_templates()
        self.classes = lexicon.word_classes()
        self.vocabulary = tuple(sorted(self.classes))
        self.tone_words = {"positive": lexicon.POSITIVE, "negative": lexicon.NEGATIVE,
                           "neutral": lexicon.NEUTRAL}

    def _fill(self, rng: random.Random, slot: str, style: Style, topic: str) -> str:
        """A word for one template role, from the sentence's topic and the writer's tone."""
        if slot == "NOUN":
            generic = rng.random() < GENERIC_NOUN_P
            return rng.choice(lexicon.GENERIC_NOUNS if generic else lexicon.TOPICS[topic]["nouns"])
        if slot == "VERB":
            generic = rng.random() < GENERIC_VERB_P
            return rng.choice(lexicon.GENERIC_VERBS if generic else lexicon.TOPICS[topic]["verbs"])
        if slot in ("ADJa", "ADJp"):
            neutral_p = ATTRIBUTIVE_NEUTRAL_P if slot == "ADJa" else 1.0 - TONE_WORD_P
            tone = style.tone
            if tone == "neutral" or rng.random() < neutral_p:
                tone = "neutral"
            elif tone == "mixed":
                tone = rng.choice(("positive", "negative"))
            return rng.choice(self.tone_words[tone])
        if slot in lexicon.LITERALS:
            return slot
        return rng.choice(lexicon.FUNCTION_WORDS[slot])

    def _fits(self, words: list[str], slots: tuple[str, ...]) -> bool:
        """True when `words` can be the first words of a sentence with these slots."""
        if len(words) >= len(slots):
            return False
        for word, slot in zip(words, slots):
            literal = slot in lexicon.LITERALS
            if (literal and word != slot) or self.classes.get(word) != slot_class(slot):
                return False
        return True

    def sentence(self, rng: random.Random, style: Style,
                 prefix: Sequence[str] = ()) -> list[str]:
        """One sentence (ending with "."), continuing `prefix` (a partial sentence) if given;
        the returned words exclude the prefix."""
        prefix = list(prefix)
        choices = [(p, s) for p, s in self.variants if self._fits(prefix, s)]
        if not choices:
            raise ValueError(f"no template continues {' '.join(prefix)!r}")
        slots = rng.choices([s for _, s in choices], weights=[p for p, _ in choices])[0]
        drift = style.drift_topic is not None and rng.random() < style.drift_p
        topic = style.drift_topic if drift else style.topic
        return [self._fill(rng, slot, style, topic) for slot in slots[len(prefix):]]

    def review(self, rng: random.Random, style: Style, opening: list[str], n_words: int,
               max_words: int) -> list[str]:
        """Words continuing `opening`: finish its partial sentence, then add whole sentences
        while that brings the length closer to `n_words` without passing `max_words`."""
        partial = opening[_last_period(opening) + 1:]
        words = self.sentence(rng, style, partial)
        while len(words) < n_words:
            nxt = self.sentence(rng, style)
            longer = len(words) + len(nxt)
            if longer > max_words or longer - n_words > n_words - len(words):
                break
            words += nxt
        return words


def _last_period(words: list[str]) -> int:
    """Index of the last "." in `words`, −1 if none."""
    for i in range(len(words) - 1, -1, -1):
        if words[i] == ".":
            return i
    return -1
