"""The built-in "reviews" task: write a short review of a topic in a requested tone and length.

Prompts look like ``write a positive short review of a hotel : the room was`` — an instruction
(tone, length, topic) followed by 2–6 opening words that the response continues. Demonstrations
are written by the hidden generator (`grammar.Writer`) with mixed quality: wrong or mixed tone,
topic drift, lengths that ignore the instruction, repeated sentences and word-level slips. The
gold reward (`gold.py`) scores a response *for its prompt*. Everything is derived from the seed
with `random.Random(str)` streams (SHA-512 seeded, stable across runs and platforms).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rlhfkit.data.schemas import PromptRecord, SFTExample
from rlhfkit.tasks import gold, grammar, lexicon

SPLITS = {"train": (0.0, 0.8), "eval": (0.8, 0.9), "test": (0.9, 1.0)}
"""Split → the interval of the keyed prompt hash that belongs to it (80 / 10 / 10 %)."""

TARGET_WORDS = {"short": 12, "long": 24}
"""Length instruction → target response length in words (punctuation marks count)."""
MAX_RESPONSE_WORDS = 32
"""Longest demonstration; generation limits should allow at least this many words."""
OPENING_WORDS = (2, 6)
"""Range of opening words given at the end of a prompt."""
MAX_PROMPT_MISSES = 100_000
"""Consecutive draws without a new prompt of the split after which `prompts` gives up."""

_PROMPT_RE = re.compile(r"^write a (positive|negative) (short|long) review of a (\w+) : (.+)$")
_WORD_RE = re.compile(r"[a-z]+|[^\sa-z]")
_TONES = ("positive", "negative")
_OPPOSITE = {"positive": "negative", "negative": "positive"}
_OTHER_LENGTH = {"short": "long", "long": "short"}

# Writer quality mix of the demonstrations: the SFT model imitates it, so these shares set
# how much room RL has (e.g. only half of the demos follow the requested tone).
TONE_MODES = (("right", 0.6), ("mixed", 0.15), ("wrong", 0.15), ("neutral", 0.1))
TOPIC_MODES = (("on", 0.6, 0.0), ("drift", 0.25, 0.5), ("off", 0.15, 1.0))
"""(mode, probability, share of sentences about another topic)."""
LENGTH_OBEY_P = 0.75
"""Probability that a demo aims at the requested length (else at the other one)."""
LENGTH_SPREAD = 0.3
"""Log-normal spread of a demo's aimed length around its target."""
MIN_AIMED_WORDS = 6
"""Shortest length a demo aims at (it may still end shorter, when a sentence would overshoot)."""
REPEAT_P = 0.15
"""Probability that a demo repeats one of its sentences."""
SLIP_P = 0.15
"""Probability that a demo has 1–3 word-level slips (swap, drop or random insertion)."""
RATING_REFERENCE_SIZE = 2000
"""Training demonstrations whose gold quintiles cut the 1–5 rating scale."""


@dataclass(frozen=True)
class PromptSpec:
    """The instruction parsed out of a prompt."""

    tone: str
    length: str
    topic: str
    opening: tuple[str, ...]


def tokenize(text: str) -> list[str]:
    """Words of a text: lower-cased runs of letters, and every other non-space character
    alone (so "great." gives "great", "." whatever the tokenizer did to spacing)."""
    return _WORD_RE.findall(text.lower())


def format_prompt(tone: str, length: str, topic: str, opening: Sequence[str]) -> str:
    """The prompt text for an instruction and its opening words."""
    return f"write a {tone} {length} review of a {topic} : {' '.join(opening)}"


@functools.lru_cache(maxsize=65536)
def parse_prompt(prompt: str) -> PromptSpec:
    """Inverse of `format_prompt`; raises ValueError for text that is not a task prompt."""
    match = _PROMPT_RE.match(" ".join(prompt.split()))
    if match is None or match.group(3) not in lexicon.TOPICS:
        raise ValueError(f"not a 'reviews' prompt: {prompt!r}")
    tone, length, topic, opening = match.groups()
    return PromptSpec(tone, length, topic, tuple(tokenize(opening)))


def _pick(rng: random.Random, table):
    """Draw a row of (name, probability, ...) rows by its probability."""
    return rng.choices(table, weights=[row[1] for row in table])[0]


class ReviewsTask:
    """The built-in gold-oracle task (see docs/task.md).

    `max_response_words` and `target_words` tell generators how long responses should be;
    `gold_weights` holds the component scales.
    """

    name = "reviews"
    max_response_words = MAX_RESPONSE_WORDS
    target_words = TARGET_WORDS
    splits = tuple(SPLITS)

    def __init__(self, seed: int = 0, gold_weights: gold.GoldWeights | None = None) -> None:
        self.seed = seed
        self.gold_weights = gold_weights or gold.GoldWeights()
        self._writer = grammar.Writer()
        class_index = {name: i for i, name in enumerate(lexicon.CLASSES)}
        self._word_class = {w: class_index[c] for w, c in self._writer.classes.items()}
        self._unk = class_index["UNK"]
        self._logprobs, self.fluency_reference = grammar.class_bigram_logprobs()
        self._tone_of = {w: "positive" for w in lexicon.POSITIVE}
        self._tone_of.update({w: "negative" for w in lexicon.NEGATIVE})
        self._topic_of = {w: t for t, spec in lexicon.TOPICS.items()
                          for w in spec["nouns"] + spec["verbs"]}
        self._prompts: dict[str, list[PromptRecord]] = {s: [] for s in SPLITS}
        self._prompt_state: dict[str, tuple[random.Random, set[str]]] = {}
        self._rating_thresholds: tuple[float, ...] | None = None

    # ----------------------------------------------------------------- prompts and demos
    def _rng(self, *parts: object) -> random.Random:
        return random.Random(":".join(["reviews", str(self.seed), *map(str, parts)]))

    def split_of(self, prompt: str) -> str:
        """The split a prompt text belongs to: a hash keyed by the seed, cut 80 / 10 / 10."""
        digest = hashlib.blake2b(f"{self.seed}:{prompt}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        return next(s for s, (lo, hi) in SPLITS.items() if lo <= u < hi)

    def _opening(self, rng: random.Random, topic: str) -> list[str]:
        style = grammar.Style(topic=topic, tone="neutral")
        words: list[str] = []
        while len(words) < OPENING_WORDS[1]:
            words += self._writer.sentence(rng, style)
        return words[: rng.randint(*OPENING_WORDS)]

    def prompts(self, split: str, n: int) -> list[PromptRecord]:
        """The first `n` distinct prompts of a split (prefix-stable: prompts(s, 10) equals
        prompts(s, 100)[:10]); splits never share a prompt text."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        done = self._prompts[split]
        rng, seen = self._prompt_state.setdefault(split, (self._rng("prompts", split), set()))
        misses = 0
        while len(done) < n:
            if misses > MAX_PROMPT_MISSES:
                raise ValueError(f"only {len(done)} distinct {split} prompts could be drawn")
            misses += 1
            topic = rng.choice(tuple(lexicon.TOPICS))
            tone, length = rng.choice(_TONES), rng.choice(tuple(TARGET_WORDS))
            opening = self._opening(rng, topic)
            text = format_prompt(tone, length, topic, opening)
            if text in seen or self.split_of(text) != split:
                continue
            seen.add(text)
            misses = 0
            meta = {"task": self.name, "topic": topic, "tone": tone, "length": length,
                    "target_words": TARGET_WORDS[length], "opening": " ".join(opening)}
            record_id = f"reviews-{self.seed}-{split}-{len(done):06d}"
            done.append(PromptRecord(prompt=text, id=record_id, meta=meta))
        return [record.model_copy(deep=True) for record in done[:n]]

    def _demo(self, rng: random.Random, spec: PromptSpec) -> tuple[str, dict]:
        """One demonstration for a prompt, with the writer's quality draws as metadata."""
        tone_mode = _pick(rng, TONE_MODES)[0]
        tone = {"right": spec.tone, "wrong": _OPPOSITE[spec.tone]}.get(tone_mode, tone_mode)
        topic_mode, _, drift_p = _pick(rng, TOPIC_MODES)
        other = rng.choice([t for t in lexicon.TOPICS if t != spec.topic])
        style = grammar.Style(spec.topic, tone, other if drift_p else None, drift_p)
        aim = spec.length if rng.random() < LENGTH_OBEY_P else _OTHER_LENGTH[spec.length]
        n_words = round(TARGET_WORDS[aim] * math.exp(rng.gauss(0.0, LENGTH_SPREAD)))
        words = self._writer.review(rng, style, list(spec.opening),
                                    max(n_words, MIN_AIMED_WORDS), MAX_RESPONSE_WORDS)
        repeated = rng.random() < REPEAT_P
        if repeated:
            longer = _repeat_sentence(rng, words)
            repeated = len(longer) <= MAX_RESPONSE_WORDS
            words = longer if repeated else words
        slips = rng.randint(1, 3) if rng.random() < SLIP_P else 0
        for _ in range(slips):
            words = _slip(rng, words, self._writer.vocabulary)
        meta = {"tone_mode": tone_mode, "topic_mode": topic_mode, "aimed_length": aim,
                "repeated": repeated, "slips": slips}
        return " ".join(words), meta

    def sft_examples(self, n: int, split: str = "train") -> list[SFTExample]:
        """One mixed-quality demonstration for each of the first `n` prompts of a split; the
        writer's quality draws and the gold reward are in `meta`."""
        examples = []
        for record in self.prompts(split, n):
            rng = self._rng("demo", split, record.id)
            response, meta = self._demo(rng, parse_prompt(record.prompt))
            meta.update(record.meta, gold=self.gold_reward(record.prompt, response))
            examples.append(SFTExample(prompt=record.prompt, response=response, id=record.id,
                                       meta=meta))
        return examples

    def sample_demos(self, prompt: str, k: int, seed: int = 0) -> list[str]:
        """`k` independent demonstrations for one prompt, from the SFT writer (e.g. to make
        SFT-like pairs without a model)."""
        spec = parse_prompt(prompt)
        rng = self._rng("sample", seed, prompt)
        return [self._demo(rng, spec)[0] for _ in range(k)]

    def corpus(self, n_lines: int) -> list[str]:
        """Lines of text for training a tokenizer: the whole vocabulary first (so every word is
        seen), then "prompt response" lines of training demonstrations."""
        header = {w for tone in _TONES for length in TARGET_WORDS
                  for w in format_prompt(tone, length, "car", []).split()}
        words = sorted(set(self._writer.vocabulary) | header)
        lines = [" ".join(words[i:i + 24]) for i in range(0, len(words), 24)]
        demos = self.sft_examples(max(n_lines - len(lines), 0))
        lines += [f"{d.prompt} {d.response}" for d in demos]
        return lines[:n_lines]

    def rating_thresholds(self) -> tuple[float, ...]:
        """The gold quintiles (20/40/60/80 %) of the first `RATING_REFERENCE_SIZE` training
        demonstrations: a noiseless rater would give each of 1–5 to a fifth of them."""
        if self._rating_thresholds is None:
            golds = [e.meta["gold"] for e in self.sft_examples(RATING_REFERENCE_SIZE)]
            self._rating_thresholds = tuple(statistics.quantiles(golds, n=5, method="inclusive"))
        return self._rating_thresholds

    # ----------------------------------------------------------------- gold reward
    def gold_components(self, prompt: str, response: str,
                        finished: bool = True) -> dict[str, float]:
        """The named gold components for a response to a prompt; they sum to `gold_reward`."""
        spec = parse_prompt(prompt)
        words = tokenize(response)
        w = self.gold_weights
        right = {x for x in words if self._tone_of.get(x) == spec.tone}
        wrong = {x for x in words if self._tone_of.get(x) == _OPPOSITE[spec.tone]}
        on = {x for x in words if self._topic_of.get(x) == spec.topic}
        off = {x for x in words if self._topic_of.get(x, spec.topic) != spec.topic}
        return {
            "tone": gold.tone_score(len(right), len(wrong), w.tone),
            "topic": gold.topic_score(len(on), len(off), w.topic),
            "fluency": gold.fluency_score(self._mean_logprob(spec, words),
                                          self.fluency_reference, w),
            "length": gold.length_score(len(words), TARGET_WORDS[spec.length], w),
            "repetition": gold.repetition_score(words, w.repetition),
            "ending": gold.ending_score(finished, words[-1] if words else None, w),
        }

    def _mean_logprob(self, spec: PromptSpec, words: list[str]) -> float:
        """Mean class-bigram log-prob of the response's transitions, the first one from the
        prompt's last word; −inf for an empty response (clipped to the floor)."""
        if not words:
            return -math.inf
        get, unk, table = self._word_class.get, self._unk, self._logprobs
        prev = get(spec.opening[-1], unk)
        total = 0.0
        for word in words:
            cur = get(word, unk)
            total += table[prev][cur]
            prev = cur
        return total / len(words)

    def gold_reward(self, prompt: str, response: str, finished: bool = True) -> float:
        """The gold reward: the sum of `gold_components` (std ≈ 1 on SFT demonstrations)."""
        return sum(self.gold_components(prompt, response, finished).values())

    def gold_rewards(self, prompts: Sequence[str], responses: Sequence[str],
                     finished: Sequence[bool] | None = None) -> list[float]:
        """`gold_reward` over aligned lists (finished=None means all ended with EOS)."""
        flags = [True] * len(prompts) if finished is None else finished
        if not len(prompts) == len(responses) == len(flags):
            raise ValueError("prompts, responses and finished must have the same length")
        return [self.gold_reward(p, r, bool(f)) for p, r, f in zip(prompts, responses, flags)]


def _repeat_sentence(rng: random.Random, words: list[str]) -> list[str]:
    """Insert a copy of one of the text's sentences right after it (a repetition slip)."""
    ends = [i for i, w in enumerate(words) if w == "."]
    if not ends:
        return words + words
    k = rng.randrange(len(ends))
    start = ends[k - 1] + 1 if k else 0
    sentence = words[start: ends[k] + 1]
    return words[: ends[k] + 1] + sentence + words[ends[k] + 1:]


def _slip(rng: random.Random, words: list[str], vocabulary: Sequence[str]) -> list[str]:
    """One word-level slip away from the final word: swap two neighbours, drop one word or
    insert a random word (a swap instead when the text is already `MAX_RESPONSE_WORDS` long)."""
    words = list(words)
    if len(words) < 3:
        return words
    i = rng.randrange(len(words) - 2)
    kind = rng.randrange(3)
    if kind == 2 and len(words) >= MAX_RESPONSE_WORDS:
        kind = 0
    if kind == 0:
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == 1:
        del words[i]
    else:
        words.insert(i, rng.choice(vocabulary))
    return words
