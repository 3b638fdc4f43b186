"""Turning prompts and responses into token ids, and back.

One seam for every stage: with a chat template the prompt is rendered as a conversation with the
generation prompt appended; without one (tiny tokenizers) the prompt text is tokenised as is, and the
response tokens follow it. Response ids always end with the EOS token when the response finished, so
the reward model reads its score at EOS and the policy learns to stop.
"""

from __future__ import annotations

from typing import Sequence

from rlhfkit.data.schemas import Message


def _messages(prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [m.model_dump() if isinstance(m, Message) else dict(m) for m in prompt]


def plain_prompt_text(prompt) -> str:
    """The prompt as text for a tokenizer without a chat template (turns joined with role labels)."""
    if isinstance(prompt, str):
        return prompt
    msgs = _messages(prompt)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:"


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt (text or messages), ready for the response to follow."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=True)
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
