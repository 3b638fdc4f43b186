"""Prompt → messages and the plain rendering for tokenizers without a chat template."""

from __future__ import annotations

from rlhfkit.data import Message, prompt_to_messages, render_plain

CHAT = [Message(role="system", content="Be brief."), Message(role="user", content="Colour?")]


def test_prompt_to_messages():
    assert prompt_to_messages("hi") == [Message(role="user", content="hi")]
    assert prompt_to_messages(CHAT) == CHAT
    assert prompt_to_messages([{"role": "user", "content": "x"}]) == [Message(role="user", content="x")]


def test_render_plain_by_hand():
    assert render_plain("2+2?", "4") == "2+2?\n4"
    assert render_plain([Message(role="user", content="2+2?")], "4", sep=" ") == "2+2? 4"
    assert render_plain(CHAT, "Blue") == "system: Be brief.\nuser: Colour?\nassistant:\nBlue"


def test_prompt_rendering_is_a_prefix_of_the_full_rendering():
    for prompt in ("2+2?", CHAT):
        assert render_plain(prompt, "Blue").startswith(render_plain(prompt))
        assert render_plain(prompt, "Blue") == render_plain(prompt) + "Blue"
