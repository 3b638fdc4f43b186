"""Batched sampling with Hugging Face `generate` (KV cache), returning what PPO needs.

The behaviour log-probs are computed from the logits the sampler saw, divided by the temperature
exactly as the training forward pass does, so the first PPO ratio is 1 (rlhf-details c3, c17).
Sampling defaults to the full vocabulary (top_k=0, top_p=1): truncated sampling makes the KL
estimate negative (c2), so it is allowed but warned about by the PPO stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rlhfkit.algos.logprobs import logprobs_from_logits, scale_logits_
from rlhfkit.data.collate import first_true_after, left_pad, right_pad


@dataclass
class Rollout:
    """A batch of sampled responses. Shapes: prompts (B, P) left-padded; responses (B, R)
    right-padded; masks bool, True = real token (the EOS token counts as real)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    """log π(token)/T of each sampled response token under the sampling policy; 0 where masked."""
    finished: torch.Tensor
    """(B,) bool: the response ended with EOS."""

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of prompt + response, (B, P + R)."""
        return (torch.cat([self.prompt_ids, self.response_ids], 1),
                torch.cat([self.prompt_mask, self.response_mask], 1))


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
) -> Rollout:
    """Sample one response per prompt (token-id lists). Seeded by torch's global RNG."""
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    sampling = {} if greedy else dict(temperature=temperature, top_p=top_p, top_k=top_k)
    out = model.generate(
        input_ids=ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens,
        do_sample=not greedy, eos_token_id=eos_id, pad_token_id=pad_id,
        return_dict_in_generate=True, output_logits=True, **sampling,
    )
    response = out.sequences[:, ids.shape[1]:]
    # The stacked logits are a fresh tensor: ÷ T in place.
    logits = scale_logits_(torch.stack(out.logits, dim=1), 1.0 if greedy else temperature)
    is_eos = response == eos_id
    response_mask = ~first_true_after(is_eos)
    logprobs = logprobs_from_logits(logits, response)
    return Rollout(
        prompt_ids=ids, prompt_mask=mask, response_ids=torch.where(response_mask, response, pad_id),
        response_mask=response_mask, logprobs=logprobs.masked_fill(~response_mask, 0.0),
        finished=is_eos.any(dim=1),
    )


def rollout_from_samples(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence[float]],
    *,
    pad_id: int,
    eos_id: int,
    device: torch.device | str | None = None,
) -> Rollout:
    """The Rollout of samples drawn elsewhere (an external engine), in the layout `generate` gives:
    prompts left-padded, each response cut after its first EOS and right-padded, the mask True
    through the EOS, `finished` = the response holds an EOS. `logprobs[i][t]` belongs to
    `responses[i][t]`; it is 0 where masked."""
    cut = [list(r[: list(r).index(eos_id) + 1]) if eos_id in r else list(r) for r in responses]
    if any(len(row) < len(r) for row, r in zip(logprobs, cut)):
        raise ValueError("every response token needs its log-prob")
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    response_ids, response_mask = right_pad(cut, pad_id)
    # The mask is right-padded, so its True entries in row-major order are each row's tokens in order.
    kept = torch.tensor([lp for row, r in zip(logprobs, cut) for lp in row[: len(r)]], dtype=torch.float32)
    behaviour = torch.zeros(response_mask.shape).masked_scatter_(response_mask, kept)
    finished = torch.tensor([eos_id in r for r in cut], dtype=torch.bool)
    return Rollout(prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device),
                   response_ids=response_ids.to(device), response_mask=response_mask.to(device),
                   logprobs=behaviour.to(device), finished=finished.to(device))
