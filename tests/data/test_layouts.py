"""Public layouts: detection from keys, mapping onto our schemas, the HH-RLHF transcript split."""

from __future__ import annotations

import json
import logging

import pytest

from rlhfkit.data import DataError, Message, read_records
from rlhfkit.data.layouts import detect_layout, hh_to_messages, split_hh


def _jsonl(tmp_path, rows, name="in.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


@pytest.mark.parametrize("row, kind, layout", [
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "pair", "native"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "source": "x"}, "pair", "prompt_chosen_rejected"),
    ({"chosen": "a", "rejected": "b"}, "pair", "chosen_rejected"),
    ({"prompt": "q", "response": "a", "id": "1"}, "sft", "native"),
    ({"prompt": "q", "response": "a", "category": "qa"}, "sft", "prompt_response"),
    ({"prompt": "q", "completion": "a"}, "sft", "prompt_completion"),
    ({"messages": []}, "sft", "messages"),
    ({"prompt": "q"}, "prompt", "native"),
    ({"prompt": "q", "difficulty": 3}, "prompt", "prompt"),
    ({"messages": []}, "prompt", "messages"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "chosen_rejected"),
    ({"chosen": "a", "rejected": "b"}, "sft", "chosen_rejected"),
    ({"prompt": "q", "response": "a", "rating": 3}, "rating", "native"),
])
def test_detect_layout_from_keys(row, kind, layout):
    assert detect_layout(row, kind) == layout


def test_text_only_rows_are_refused_with_the_accepted_layouts(tmp_path):
    path = _jsonl(tmp_path, [{"text": "Human: hi Assistant: hello"}])
    with pytest.raises(DataError) as info:
        read_records(path, "sft")
    message = str(info.value)
    assert message.startswith(f"{path}:1: unknown layout for kind 'sft': keys found ['text']")
    for layout in ("native (prompt, response", "prompt_completion (prompt, completion)", "messages (messages)"):
        assert layout in message
    assert "bare 'text' column" in message


def test_unknown_layout_raises_even_when_skipping(tmp_path):
    path = _jsonl(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"in\.jsonl:1: unknown layout .*\['answer', 'question'\]"):
        read_records(path, "sft", on_error="skip")


def test_forced_layout_and_unknown_layout_name(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b", "source": "s"}])
    (pair,), _ = read_records(path, "pair", layout="prompt_chosen_rejected")
    assert pair.meta == {"source": "s"}
    with pytest.raises(DataError, match=r"in\.jsonl:1: field 'source': unknown field"):
        read_records(path, "pair", layout="native")
    with pytest.raises(ValueError, match="accepted: native, prompt_chosen_rejected, chosen_rejected"):
        read_records(path, "pair", layout="hh")


def test_native_typo_is_an_error_not_meta(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"},
                             {"prompt": "q", "chosen": "a", "rejected": "b", "anotator": "x"}])
    with pytest.raises(DataError, match=r"in\.jsonl:2: field 'anotator': unknown field; PreferencePair fields"):
        read_records(path, "pair")


def test_public_extra_columns_go_to_meta_and_are_logged(tmp_path, caplog):
    path = _jsonl(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b", "prompt_id": "7",
                              "score_chosen": 9, "meta": {"round": 1}}])
    with caplog.at_level(logging.WARNING):
        (pair,), _ = read_records(path, "pair")
    assert (pair.prompt_id, pair.meta) == ("7", {"round": 1, "score_chosen": 9})
    assert "['score_chosen'] are not pair fields; kept under meta" in caplog.text


def test_prompt_chosen_rejected_with_chat_lists(tmp_path):
    # TRL's conversational form: prompt turns, then the assistant turn alone in chosen/rejected;
    # and the UltraFeedback form, where chosen/rejected repeat the prompt turns.
    prompt = _msgs(("system", "be kind"), ("user", "hi"))
    rows = [{"prompt": prompt, "chosen": _msgs(("assistant", "hello")), "rejected": _msgs(("assistant", "no"))},
            {"prompt": prompt, "chosen": prompt + _msgs(("assistant", "hey")),
             "rejected": prompt + _msgs(("assistant", "bye"))}]
    pairs, _ = read_records(_jsonl(tmp_path, rows), "pair")
    assert [(p.chosen, p.rejected) for p in pairs] == [("hello", "no"), ("hey", "bye")]
    assert pairs[1].prompt == [Message(role="system", content="be kind"), Message(role="user", content="hi")]


def test_response_list_that_does_not_repeat_the_prompt_is_an_error(tmp_path):
    rows = [{"prompt": "hi", "chosen": _msgs(("user", "other"), ("assistant", "a")), "rejected": "b"}]
    with pytest.raises(DataError, match=r"in\.jsonl:1: field 'chosen': the turns before the last one differ"):
        read_records(_jsonl(tmp_path, rows), "pair")
    rows = [{"prompt": "hi", "chosen": "a", "rejected": _msgs(("user", "hi"))}]
    with pytest.raises(DataError, match=r"in\.jsonl:1: field 'rejected': the last message must be the assistant"):
        read_records(_jsonl(tmp_path, rows), "pair")


def test_chosen_rejected_message_lists_split_before_last_turn(tmp_path):
    shared = _msgs(("user", "a?"), ("assistant", "b."), ("user", "c?"))
    rows = [{"chosen": shared + _msgs(("assistant", "yes")), "rejected": shared + _msgs(("assistant", "no"))},
            {"chosen": shared + _msgs(("assistant", "yes")),
             "rejected": _msgs(("user", "a?"), ("assistant", "B!"), ("user", "c?"), ("assistant", "no"))}]
    pairs, skips = read_records(_jsonl(tmp_path, rows), "pair", on_error="skip")
    assert [m.content for m in pairs[0].prompt] == ["a?", "b.", "c?"]
    assert (pairs[0].chosen, pairs[0].rejected) == ("yes", "no")
    assert skips.as_dict()["by_reason"] == {"no_shared_prompt": 1}
    assert skips.examples["no_shared_prompt"][0].startswith(f"{tmp_path / 'in.jsonl'}:2: field 'rejected'")


def test_sft_layouts(tmp_path):
    rows_by_layout = {
        "messages": [{"messages": _msgs(("user", "2+2?"), ("assistant", "4")), "id": "m1", "lang": "en"}],
        "completion": [{"prompt": "2+2?", "completion": "4", "id": "m1", "lang": "en"}],
        "response": [{"prompt": "2+2?", "response": "4", "id": "m1", "lang": "en"}],
        "chat_completion": [{"prompt": _msgs(("user", "2+2?")), "completion": _msgs(("assistant", "4")),
                             "id": "m1", "lang": "en"}],
    }
    for name, rows in rows_by_layout.items():
        (example,), _ = read_records(_jsonl(tmp_path, rows, f"{name}.jsonl"), "sft")
        prompt = example.prompt if isinstance(example.prompt, str) else example.prompt[0].content
        assert (prompt, example.response, example.id, example.meta) == ("2+2?", "4", "m1", {"lang": "en"}), name


def test_sft_messages_errors_name_the_messages_column(tmp_path):
    cases = [([{"messages": _msgs(("user", "q"), ("user", "q2"))}], r":1: field 'messages': the last message"),
             ([{"messages": _msgs(("assistant", "a"))}], r":1: field 'messages': has no messages"),
             ([{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "a"}]}],
              r":1: field 'messages\.0\.role': must be one of 'system', 'user' or 'assistant', got 'bot'"),
             ([{"messages": "q"}], r":1: field 'messages': must be a list of messages, got str"),
             ([{"prompt": "q", "completion": "  "}], r":1: field 'completion': must not be empty")]
    for rows, pattern in cases:
        with pytest.raises(DataError, match=r"in\.jsonl" + pattern):
            read_records(_jsonl(tmp_path, rows), "sft")


def test_prompt_layouts(tmp_path):
    rows = [{"messages": _msgs(("system", "s"), ("user", "u")), "id": "x"}]
    (record,), _ = read_records(_jsonl(tmp_path, rows), "prompt")
    assert (record.id, [m.role for m in record.prompt]) == ("x", ["system", "user"])


HH = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:"


def test_hh_split_by_hand():
    # The shared prefix runs into " Wh" (both answers start with it); the cut falls back to the
    # last "\n\nAssistant:" inside the shared part.
    prompt, chosen, rejected = split_hh(HH + " Why did the chicken...", HH + " Why not.")
    assert (prompt, chosen, rejected) == (HH, "Why did the chicken...", "Why not.")
    assert hh_to_messages(prompt) == _msgs(("user", "Hi there"), ("assistant", "Hello!"),
                                           ("user", "Tell me a joke"))


def test_hh_rows_become_chat_pairs(tmp_path):
    rows = [{"chosen": HH + " Sure.", "rejected": HH + " No."}]
    (pair,), _ = read_records(_jsonl(tmp_path, rows), "pair")
    assert pair.prompt == [Message(role="user", content="Hi there"), Message(role="assistant", content="Hello!"),
                           Message(role="user", content="Tell me a joke")]
    assert (pair.chosen, pair.rejected) == ("Sure.", "No.")


def test_hh_rows_as_prompts_and_as_demonstrations_of_the_chosen_answer(tmp_path):
    path = _jsonl(tmp_path, [{"chosen": HH + " Sure.", "rejected": HH + " No."}])
    (prompt,), _ = read_records(path, "prompt")
    (demo,), _ = read_records(path, "sft")
    turns = [Message(role="user", content="Hi there"), Message(role="assistant", content="Hello!"),
             Message(role="user", content="Tell me a joke")]
    assert prompt.prompt == turns and demo.prompt == turns and demo.response == "Sure."


@pytest.mark.parametrize("chosen, rejected, field, problem", [
    # Nothing shared up to an assistant cue.
    ("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y", "chosen", "chosen and rejected share no prompt"),
    # The chosen transcript goes on for another exchange after the shared cut.
    (HH + " Sure.\n\nHuman: more\n\nAssistant: ok", HH + " No.", "chosen", "more turns follow"),
    (HH + " Sure.", HH + " No.\n\nHuman: why?", "rejected", "more turns follow"),
    # An empty answer is not a response.
    (HH + " ", HH + " No.", "chosen", "must not be empty"),
    (HH + " Same.", HH + " Same.", "rejected", "chosen and rejected are identical"),
], ids=["no-shared-cue", "chosen-continues", "rejected-continues", "empty", "identical"])
def test_hh_bad_rows_error_with_line_and_field(tmp_path, chosen, rejected, field, problem):
    good = {"chosen": HH + " A.", "rejected": HH + " B."}
    path = _jsonl(tmp_path, [good, good, {"chosen": chosen, "rejected": rejected}])
    with pytest.raises(DataError, match=rf"in\.jsonl:3: field '{field}': {problem}"):
        read_records(path, "pair")
    records, skips = read_records(path, "pair", on_error="skip")
    assert (len(records), skips.total) == (2, 1)
