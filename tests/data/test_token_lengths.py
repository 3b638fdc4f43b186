"""Length checks with a stand-in tokenizer (one token per whitespace-separated word)."""

from __future__ import annotations

import json

import pytest

from rlhfkit.data import (
    DataError,
    PreferencePair,
    PromptRecord,
    Ranking,
    check_token_lengths,
    read_records,
    render_plain,
)


def words(prompt, response):
    """Token count of the plain rendering, one token per word."""
    return len(render_plain(prompt, response or "").split())


PAIRS = [PreferencePair(prompt="one two", chosen="three", rejected="three four"),          # 3 and 4 tokens
         PreferencePair(prompt="one two", chosen="a b c d", rejected="e"),                 # 6 and 3
         PreferencePair(prompt="one two three four five", chosen="a", rejected="b")]       # 6 and 6


def test_long_records_are_skipped_and_counted():
    kept, skips = check_token_lengths(PAIRS, words, max_tokens=5, on_error="skip", source="pairs")
    assert kept == PAIRS[:1]
    assert skips.as_dict()["by_reason"] == {"too_long": 2}
    assert skips.examples["too_long"] == [
        "pairs:2: field 'chosen': prompt + response is 6 tokens, over the limit of 5",
        "pairs:3: field 'chosen': prompt + response is 6 tokens, over the limit of 5"]


def test_prompt_limit_and_raise():
    with pytest.raises(DataError, match=r"^records:3: field 'prompt': the prompt is 5 tokens, over the limit of 4"):
        check_token_lengths(PAIRS, words, max_tokens=10, max_prompt_tokens=4)
    prompts = [PromptRecord(prompt="a b c")]
    assert check_token_lengths(prompts, words, max_tokens=3)[0] == prompts
    with pytest.raises(DataError, match="field 'prompt': the prompt is 3 tokens, over the limit of 2"):
        check_token_lengths(prompts, words, max_tokens=2)


def test_ranking_names_the_response():
    ranking = Ranking(prompt="p", responses=["short", "much too long here"], ranks=[1, 2])
    with pytest.raises(DataError, match=r"field 'responses\.1': prompt \+ response is 5 tokens"):
        check_token_lengths([ranking], words, max_tokens=4)


def test_read_records_checks_lengths_with_file_lines_and_input_columns(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a b c d"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"sft\.jsonl:2: field 'messages': prompt \+ response is 5 tokens"):
        read_records(path, "sft", tokenizer_fn=words, max_tokens=4)
    records, skips = read_records(path, "sft", tokenizer_fn=words, max_tokens=4, on_error="skip")
    assert (len(records), skips.as_dict()["by_reason"]) == (1, {"too_long": 1})
