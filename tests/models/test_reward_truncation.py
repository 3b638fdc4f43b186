"""Left truncation of long conversations for the RM: the oldest exchanges go first, every
response of a prompt sees the same context, and pairs that collapse to one input are counted
and skipped — the HH-RLHF situation (long multi-turn prompts), on a tiny model."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config.common import TinyModelConfig
from rlhfkit.config.rm import RMModelConfig
from rlhfkit.data import Message
from rlhfkit.data.chat import drop_oldest_turn
from rlhfkit.data.errors import SkipReport
from rlhfkit.models.reward import build_reward_model
from rlhfkit.tasks import get_task
from rlhfkit.train.rm_data import read_groups

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, vocab_size=200, tokenizer_lines=300,
                       max_positions=256)
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")

CONVERSATION = [Message(role="user", content="first question about the movie"),
                Message(role="assistant", content="an early answer that is rather long and rambling"),
                Message(role="user", content="second question about the plot"),
                Message(role="assistant", content="a second answer"),
                Message(role="user", content="last question please")]


def m(role, content):
    return Message(role=role, content=content)


def test_drop_oldest_turn_keeps_system_and_starts_with_a_user_turn():
    convo = [m("system", "be kind"), m("user", "a"), m("assistant", "b"), m("assistant", "b2"), m("user", "c")]
    assert drop_oldest_turn(convo) == [m("system", "be kind"), m("user", "c")]
    assert drop_oldest_turn([m("user", "c")]) == []
    assert drop_oldest_turn(CONVERSATION) == CONVERSATION[2:]


@pytest.fixture(scope="module", params=["plain", "chat"])
def rm(request):
    torch.set_num_threads(1)
    model = build_reward_model(RMModelConfig(tiny=TINY, max_length=256), get_task("reviews", seed=0).corpus, 0)
    if request.param == "chat":
        model.tokenizer.chat_template = CHAT_TEMPLATE
        model.input_format = "chat"
    assert model.input_format == request.param
    return model


def test_whole_turns_are_dropped_first_and_responses_share_the_prompt(rm):
    responses = ["a short reply", "a much longer reply that goes on and on about the film"]
    full = rm.encode_group(CONVERSATION, responses, [True, True])
    rm.max_length = len(full[1].ids) - 1  # one token too many for the longer response
    try:
        cut = rm.encode_group(CONVERSATION, responses, [True, True])
    finally:
        rm.max_length = 256
    expected_prompt = rm._prompt_ids(CONVERSATION[2:])  # the first exchange went, whole
    for x, r in zip(cut, responses):
        assert x.prompt_len == len(expected_prompt) and x.ids[:x.prompt_len] == expected_prompt
        assert len(x.ids) <= len(full[1].ids) - 1
    text = rm.tokenizer.decode(cut[0].ids)
    assert "last question" in text and "first question" not in text


def test_a_single_long_turn_loses_its_start_and_keeps_the_eos(rm):
    long_prompt = [m("user", " ".join(["word"] * 300) + " final request")]
    (x,) = rm.encode_group(long_prompt, ["fine"], [True])
    assert len(x.ids) == 256 and x.ids[-1] == rm.tokenizer.eos_token_id
    assert "final request" in rm.tokenizer.decode(x.ids)


def test_pairs_identical_after_truncation_are_counted_and_skipped(rm, tmp_path):
    import json

    tail = " ".join(["the same long ending"] * 80)
    rows = [{"prompt": "q1", "chosen": "good start " + tail, "rejected": "bad start " + tail},
            {"prompt": "q2", "chosen": "a fine answer", "rejected": "a poor answer"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm.max_length = 64
    try:
        skips = SkipReport()
        groups = read_groups(str(path), "pair", rm, "raise", 1.0, skips)
    finally:
        rm.max_length = 256
    assert [g.prompt for g in groups] == ["q2"]
    assert skips.as_dict()["by_reason"] == {"identical_after_truncation": 1}
