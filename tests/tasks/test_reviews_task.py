"""The "reviews" task: determinism, splits, demonstrations, tokenizer corpus, registry."""

import statistics
import time

import pytest

from rlhfkit.data.schemas import PromptRecord, SFTExample
from rlhfkit.tasks import TASKS, ReviewsTask, get_task
from rlhfkit.tasks import lexicon
from rlhfkit.tasks.reviews import MAX_RESPONSE_WORDS, format_prompt, parse_prompt, tokenize



def test_registry_and_cheap_construction():
    assert TASKS["reviews"] is ReviewsTask
    start = time.perf_counter()
    task = get_task("reviews", seed=3)
    assert time.perf_counter() - start < 1.0
    assert task.name == "reviews" and task.seed == 3
    with pytest.raises(ValueError, match="valid: reviews"):
        get_task("nope")


def test_same_seed_same_data_other_seed_other_data(task):
    again = get_task("reviews", seed=0)
    other = get_task("reviews", seed=1)
    assert [p.model_dump() for p in again.prompts("train", 50)] == \
        [p.model_dump() for p in task.prompts("train", 50)]
    assert [e.model_dump() for e in again.sft_examples(50)] == \
        [e.model_dump() for e in task.sft_examples(50)]
    assert again.corpus(40) == task.corpus(40)
    assert [p.prompt for p in other.prompts("train", 50)] != [p.prompt for p in task.prompts("train", 50)]


def test_prompts_prefix_stable_distinct_and_typed(task):
    long = task.prompts("eval", 300)
    assert [p.prompt for p in task.prompts("eval", 20)] == [p.prompt for p in long[:20]]
    assert len({p.prompt for p in long}) == 300 and len({p.id for p in long}) == 300
    assert all(isinstance(p, PromptRecord) for p in long)
    for record in long[:50]:
        spec = parse_prompt(record.prompt)
        assert record.meta["topic"] == spec.topic and record.meta["tone"] == spec.tone
        assert record.meta["length"] == spec.length
        assert record.meta["target_words"] == {"short": 12, "long": 24}[spec.length]
        assert 2 <= len(spec.opening) <= 6
        assert len(record.prompt.split()) <= 16
    with pytest.raises(ValueError, match="unknown split"):
        task.prompts("validation", 1)


def test_splits_disjoint(task):
    texts = {s: {p.prompt for p in task.prompts(s, 400)} for s in ("train", "eval", "test")}
    assert not texts["train"] & texts["eval"]
    assert not texts["train"] & texts["test"]
    assert not texts["eval"] & texts["test"]
    assert all(task.split_of(t) == "test" for t in texts["test"])


def test_prompt_round_trip_and_rejection():
    text = format_prompt("negative", "long", "car", ["the", "engine", "was"])
    assert text == "write a negative long review of a car : the engine was"
    spec = parse_prompt("  write a negative long review of a car :  the engine was ")
    assert (spec.tone, spec.length, spec.topic, spec.opening) == \
        ("negative", "long", "car", ("the", "engine", "was"))
    with pytest.raises(ValueError, match="not a 'reviews' prompt"):
        parse_prompt("write a negative long review of a spaceship : the engine was")
    assert tokenize("The room WAS great.It ,was") == ["the", "room", "was", "great", ".", "it", ",", "was"]


def test_sft_examples_have_mixed_quality(task):
    examples = task.sft_examples(1000)
    assert all(isinstance(e, SFTExample) for e in examples)
    golds = [e.meta["gold"] for e in examples]
    assert golds == [task.gold_reward(e.prompt, e.response) for e in examples]
    # Spread comparable to 1 (the gold's design scale) and both good and bad demos present.
    assert 0.7 < statistics.pstdev(golds) < 1.4
    assert min(golds) < -1.0 and max(golds) > 1.2
    modes = {e.meta["tone_mode"] for e in examples} | {e.meta["topic_mode"] for e in examples}
    assert modes == {"right", "wrong", "mixed", "neutral", "on", "drift", "off"}
    right = [e.meta["gold"] for e in examples if e.meta["tone_mode"] == "right"]
    wrong = [e.meta["gold"] for e in examples if e.meta["tone_mode"] == "wrong"]
    assert statistics.mean(right) > statistics.mean(wrong) + 1.0
    lengths = [len(tokenize(e.response)) for e in examples]
    assert min(lengths) >= 2 and max(lengths) <= MAX_RESPONSE_WORDS
    assert sum(e.meta["repeated"] for e in examples) > 50 and sum(e.meta["slips"] > 0 for e in examples) > 50


def test_sample_demos_deterministic_and_varied(task):
    prompt = task.prompts("train", 1)[0].prompt
    demos = task.sample_demos(prompt, 8, seed=5)
    assert demos == task.sample_demos(prompt, 8, seed=5)
    assert demos != task.sample_demos(prompt, 8, seed=6)
    assert len(set(demos)) > 4


def test_corpus_covers_the_language(task):
    lines = task.corpus(200)
    assert len(lines) == 200
    words = {w for line in lines for w in line.split()}
    assert set(lexicon.word_classes()) <= words
    assert {"write", "review", "positive", "negative", "short", "long", ":"} <= words
    assert all(w.isalpha() or w in ",.:" for w in words)
