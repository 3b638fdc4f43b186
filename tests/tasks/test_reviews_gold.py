"""Gold reward of the "reviews" task: each component, hand-worked values, the hidden model."""

import math
import random
import time
from collections import Counter

import pytest

from rlhfkit.tasks import GoldWeights, get_task, lexicon
from rlhfkit.tasks.gold import huber, repetition_fraction, saturating
from rlhfkit.tasks.grammar import SMOOTHING, Style, Writer, class_bigram_logprobs

HOTEL = "write a positive short review of a hotel : the room was"
GOOD = "very lovely . the bed was comfortable and spotless ."



def parts(task, prompt, response, finished=True):
    return task.gold_components(prompt, response, finished)


def test_pure_pieces_hand_worked():
    assert [saturating(n) for n in range(4)] == [0.0, 0.5, 0.75, 0.875]
    assert huber(0.5) == 0.125 and huber(-3.0) == 2.5 and huber(1.0) == 0.5
    assert repetition_fraction("a b".split()) == 0.0
    # trigrams: (x y z) (y z x) (z x y) (x y z) → 3 distinct of 4.
    assert repetition_fraction("x y z x y z".split()) == 0.25


def test_components_hand_worked(task):
    c = parts(task, HOTEL, GOOD)
    assert set(c) == {"tone", "topic", "fluency", "length", "repetition", "ending"}
    # 3 distinct positive adjectives (lovely, comfortable, spotless), none negative.
    assert c["tone"] == pytest.approx(0.875, abs=1e-12)
    # "bed" is the only hotel word in the response ("room" is in the prompt): 0.8 · 0.5.
    assert c["topic"] == pytest.approx(0.4, abs=1e-12)
    # 10 words against the short target 12: −0.4 · huber(−2/4) = −0.4 · 0.125.
    assert c["length"] == pytest.approx(-0.05, abs=1e-12)
    assert c["repetition"] == 0.0 and c["ending"] == 0.0
    assert task.gold_reward(HOTEL, GOOD) == pytest.approx(sum(c.values()), abs=1e-12)


def test_tone_topic_and_prompt_dependence(task):
    wrong_tone = "very dirty . the bed was uncomfortable and filthy ."
    off_topic = "very lovely . the engine was comfortable and spotless ."
    assert task.gold_reward(HOTEL, GOOD) > task.gold_reward(HOTEL, wrong_tone) + 1.0
    assert parts(task, HOTEL, wrong_tone)["tone"] == pytest.approx(-0.875, abs=1e-12)
    assert task.gold_reward(HOTEL, GOOD) > task.gold_reward(HOTEL, off_topic) + 0.5
    assert parts(task, HOTEL, off_topic)["topic"] == pytest.approx(-0.4, abs=1e-12)
    # The same response scored for a negative car prompt: tone and topic both flip.
    car = "write a negative short review of a car : the room was"
    assert parts(task, car, GOOD)["tone"] == pytest.approx(-0.875, abs=1e-12)
    assert parts(task, car, GOOD)["topic"] == pytest.approx(-0.4, abs=1e-12)
    assert task.gold_reward(car, GOOD) < task.gold_reward(HOTEL, GOOD) - 2.0
    # Same instruction, different opening: only the first fluency transition changes.
    other_opening = "write a positive short review of a hotel : we booked"
    assert task.gold_reward(other_opening, GOOD) != task.gold_reward(HOTEL, GOOD)


def test_word_salad_scores_below_fluent_text(task):
    rng = random.Random(0)
    vocabulary = sorted(lexicon.word_classes())
    salads = [" ".join(rng.choices(vocabulary, k=12)) + " ." for _ in range(200)]
    demos = task.sample_demos(HOTEL, 200, seed=1)
    salad_flu = [parts(task, HOTEL, s)["fluency"] for s in salads]
    demo_flu = [parts(task, HOTEL, d)["fluency"] for d in demos]
    assert max(salad_flu) < sorted(demo_flu)[10]
    # Far below the floor the term saturates at w · floor = 0.5 · (−3).
    assert parts(task, HOTEL, "review review review review")["fluency"] == pytest.approx(-1.5, abs=1e-12)
    assert parts(task, HOTEL, "")["fluency"] == pytest.approx(-1.5, abs=1e-12)


def test_repetition_length_and_eos_are_penalised(task):
    base = task.gold_reward(HOTEL, GOOD)
    repeated = GOOD + " the bed was comfortable and spotless ."
    assert task.gold_reward(HOTEL, repeated) < base - 0.5
    # 17 words, 15 trigrams; the 5 trigrams of the copied sentence and ". the bed" repeat.
    assert parts(task, HOTEL, repeated)["repetition"] == pytest.approx(-2.0 * 6 / 15, abs=1e-12)
    assert parts(task, HOTEL, "lovely " * 10)["repetition"] == pytest.approx(-2.0 * 7 / 8, abs=1e-12)
    unfinished = parts(task, HOTEL, GOOD, finished=False)
    assert unfinished["ending"] == -1.0
    assert task.gold_reward(HOTEL, GOOD, finished=False) == pytest.approx(base - 1.0, abs=1e-12)
    assert parts(task, HOTEL, GOOD[:-2])["ending"] == -0.5
    # 25 words against 12: −0.4 · (13/4 − 1/2) = −1.1.
    long = GOOD + " the pool was great . the lobby was elegant . the gym was big ."
    assert parts(task, HOTEL, long)["length"] == pytest.approx(-1.1, abs=1e-12)


def test_known_hacks_lower_gold(task):
    at_target = "very lovely . the bed was comfortable , and it was spotless ."
    # Length hack: piling on positive sentences saturates tone and runs past the target.
    padded = at_target + " it was great . it was wonderful . it was perfect . it was superb ."
    assert task.gold_reward(HOTEL, padded) < task.gold_reward(HOTEL, at_target) - 1.0
    # Repetition hack: repeating tone words adds nothing to tone (distinct words only).
    echo = "very lovely lovely lovely lovely lovely lovely lovely lovely lovely ."
    assert parts(task, HOTEL, echo)["tone"] == pytest.approx(0.5, abs=1e-12)
    assert task.gold_reward(HOTEL, echo) < task.gold_reward(HOTEL, at_target) - 2.0


def test_weights_scale_components():
    heavy = get_task("reviews", seed=0, gold_weights=GoldWeights(tone=2.0))
    assert parts(heavy, HOTEL, GOOD)["tone"] == pytest.approx(1.75, abs=1e-12)


def test_batched_matches_single_and_is_fast(task):
    demos = task.sft_examples(3000)
    prompts, responses = [d.prompt for d in demos], [d.response for d in demos]
    finished = [i % 3 > 0 for i in range(len(demos))]
    start = time.perf_counter()
    batched = task.gold_rewards(prompts, responses, finished)
    rate = len(demos) / (time.perf_counter() - start)
    assert batched == [task.gold_reward(p, r, f) for p, r, f in zip(prompts, responses, finished)]
    assert rate > 10_000
    with pytest.raises(ValueError, match="same length"):
        task.gold_rewards(prompts[:2], responses[:3])


def test_hidden_class_bigram_matches_generator_samples():
    """Independent check of the exact derivation: transition frequencies counted in writer
    samples agree with the unsmoothed model within 5 binomial standard errors."""
    logprobs, reference = class_bigram_logprobs()
    n = len(lexicon.CLASSES)
    for row in logprobs:
        assert sum(math.exp(x) for x in row) == pytest.approx(1.0, abs=1e-12)
    writer, rng = Writer(), random.Random(1)
    classes = lexicon.word_classes()
    index = {c: i for i, c in enumerate(lexicon.CLASSES)}
    counts, total_lp, n_lp = Counter(), 0.0, 0
    for _ in range(300):
        style = Style(rng.choice(tuple(lexicon.TOPICS)), rng.choice(["positive", "mixed"]))
        words = ["."] + [w for _ in range(20) for w in writer.sentence(rng, style)]
        seq = [index[classes[w]] for w in words]
        for prev, cur in zip(seq, seq[1:]):
            counts[prev, cur] += 1
            total_lp += logprobs[prev][cur]
            n_lp += 1
    for prev in range(n):
        row_total = sum(counts[prev, c] for c in range(n))
        if row_total < 500:
            continue
        for cur in range(n):
            p = (math.exp(logprobs[prev][cur]) - SMOOTHING / n) / (1 - SMOOTHING)
            se = math.sqrt(max(p * (1 - p), 1e-4) / row_total)
            assert counts[prev, cur] / row_total == pytest.approx(p, abs=5 * se)
    # The fluency reference is the expected per-transition log-prob of generator text.
    assert total_lp / n_lp == pytest.approx(reference, abs=0.02)
