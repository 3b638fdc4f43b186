"""Prompts as chat messages, and a plain-text rendering for tokenizers without a chat template.

The seam with `rlhfkit.models`: a model whose tokenizer has a chat template renders
`prompt_to_messages(prompt)` with it; one without (the tiny task models) uses `render_plain`.
Nothing here needs transformers.
"""

from __future__ import annotations

from typing import Sequence

from rlhfkit.data.schemas import Message

PLAIN_SEP = "\n"
"""Default separator between turns, and between the prompt and the response, in plain text."""


def prompt_to_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A prompt as chat messages: a string becomes a single user turn; a message list is copied."""
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)]
    return [Message.model_validate(m) for m in prompt]


def render_plain(prompt: str | Sequence[Message], response: str = "", sep: str = PLAIN_SEP) -> str:
    """Prompt and response as one string, for a tokenizer without a chat template.

    A plain prompt (a string, or a single user turn) is its own text; a longer conversation is
    written one `role: content` turn per piece, ending with the cue `assistant:`. The response
    follows after `sep`, so `render_plain(p, r) == render_plain(p) + r`: the prompt's text is a
    prefix of every rendering of a response to it.
    """
    messages = prompt_to_messages(prompt)
    if len(messages) == 1 and messages[0].role == "user":
        text = messages[0].content
    else:
        text = sep.join([f"{m.role}: {m.content}" for m in messages] + ["assistant:"])
    return text + sep + response


def drop_oldest_turn(messages: Sequence[Message]) -> list[Message]:
    """The conversation without its oldest exchange, for left truncation that keeps the last
    turns: leading system messages stay; after them the first message goes, and then any
    assistant messages, so what is left again starts with a user turn."""
    messages = [Message.model_validate(m) for m in messages]
    n_system = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    rest = messages[n_system + 1:]
    while rest and rest[0].role == "assistant":
        rest = rest[1:]
    return messages[:n_system] + rest
