"""Sampling text responses for a list of prompts (evaluation, candidate sampling, logging)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.models.text import decode_response, encode_prompt
from rlhfkit.rollout.generate import generate


@dataclass(frozen=True)
class Sample:
    prompt: object
    """The prompt (text or messages) as given."""
    text: str
    """The decoded response, up to EOS."""
    finished: bool
    """Whether the response ended with EOS."""
    num_tokens: int
    """Response length in tokens (EOS included)."""


def sample_responses(model, tokenizer, prompts: list, *, max_new_tokens: int, temperature: float = 1.0,
                     top_p: float = 1.0, top_k: int = 0, greedy: bool = False, batch_size: int = 64) -> list[Sample]:
    """One response per prompt, in batches; uses torch's global RNG (seed it for reproducibility)."""
    was_training = model.training
    model.eval()
    samples: list[Sample] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rollout = generate(
            model, [encode_prompt(tokenizer, p) for p in chunk], pad_id=tokenizer.pad_token_id,
            eos_id=tokenizer.eos_token_id, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, top_k=top_k, greedy=greedy,
        )
        lengths = rollout.response_mask.sum(1).tolist()
        for prompt, ids, n in zip(chunk, rollout.response_ids.tolist(), lengths):
            text, finished = decode_response(tokenizer, ids[:n])
            samples.append(Sample(prompt, text, finished, n))
    model.train(was_training)
    return samples

