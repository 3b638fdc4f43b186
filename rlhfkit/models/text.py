"""Turning prompts and responses into token ids, and back.

One seam for every stage: with a chat template the prompt is rendered as a conversation with the
generation prompt appended; without one (tiny tokenizers) the prompt text is tokenised as is, and the
response tokens follow it. Response ids always end with the EOS token when the response finished, so
the reward model reads its score at EOS and the policy learns to stop.
"""

from __future__ import annotations

from typing import Sequence

from rlhfkit.data.chat import PLAIN_SEP, prompt_to_messages, render_plain


def plain_prompt_text(prompt) -> str:
    """The prompt as text for a tokenizer without a chat template: `render_plain` without the
    separator it puts before a response (the response tokens follow directly)."""
    return render_plain(prompt, "", PLAIN_SEP)[: -len(PLAIN_SEP)]


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt (text or messages), ready for the response to follow."""
    if getattr(tokenizer, "chat_template", None):
        messages = [m.model_dump() for m in prompt_to_messages(prompt)]
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    return tokenizer(plain_prompt_text(prompt), add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, response: str, finished: bool = True) -> list[int]:
    """Token ids of a response, with EOS appended when it finished."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if finished else ids


def decode_response(tokenizer, ids: Sequence[int]) -> tuple[str, bool]:
    """(text, finished): the response text up to the first EOS, and whether an EOS was there."""
    ids = list(ids)
    finished = tokenizer.eos_token_id in ids
    if finished:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip(), finished
