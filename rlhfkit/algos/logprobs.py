"""Token log-probabilities and entropies from logits, without materialising a one-hot or a full
(B, T, V) log-softmax in one go.

Both functions loop over chunks of batch rows of at most `CHUNK_ELEMENTS` logits: the temporaries
of `logsumexp` / `log_softmax` are then one chunk at a time instead of the whole (B, T, V) tensor,
which is what dominates memory for large vocabularies (the same trade TRL's
`selective_log_softmax` makes, there one row at a time), while a small batch takes one vectorised
pass instead of B small ones.

Half-precision logits (fp16/bf16) are upcast to fp32 row by row and the result is returned in
fp32: PPO takes exp(logπ − logπ_old), and bf16 log-probs alone give a ratio spread of ≈0.05 at
step 0 (rlhf-details c17), so a bf16 result would defeat the "first ratio = 1" check.
fp32/fp64 logits keep their dtype.
"""

from __future__ import annotations

import torch

_HALF_DTYPES = (torch.float16, torch.bfloat16)
CHUNK_ELEMENTS = 1 << 24
"""Logits per chunk of rows (64 MiB in fp32): a (T, V) row of a 150k vocabulary × 512 tokens is
77M logits, one row a chunk; the built-in task's 16 × 48 × 2k is one chunk for the whole batch."""


def _row_chunks(logits: torch.Tensor, *others: torch.Tensor):
    """(logits chunk, *other chunks) over chunks of whole rows of at most CHUNK_ELEMENTS logits."""
    per_row = max(1, logits[0].numel()) if logits.shape[0] else 1
    rows = max(1, CHUNK_ELEMENTS // per_row)
    return zip(logits.split(rows), *(t.split(rows) for t in others))


def _scaled(row_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = row_logits.float() if row_logits.dtype in _HALF_DTYPES else row_logits
    return z if temperature == 1.0 else z / temperature


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def scale_logits_(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, **in place** when `logits` is fp32 or fp64, saving a copy of
    the (B, T, V) tensor; then pass temperature 1 to `logprobs_from_logits` / `entropy_from_logits`.
    Half-precision logits are upcast first (a new tensor), as those functions do.

    Only for a tensor the caller owns whose producer's backward does not read it — an LM head's
    fresh output (a Linear saves its input and weight, not its output); autograd raises otherwise.
    The values are bit-for-bit those of `logits.float() / temperature`.
    """
    _check_temperature(temperature)
    if logits.dtype in _HALF_DTYPES:
        logits = logits.float()
    return logits if temperature == 1.0 else logits.div_(temperature)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(tokens) under softmax(logits / temperature).

    logπ(y_t) = z_{t, y_t} − logsumexp_v z_{t, v},   z = logits / temperature.

    Shapes: `logits` (B, T, V), `tokens` (B, T) long → (B, T). Position t of `logits` must already
    be the distribution over `tokens[:, t]` (the caller shifts by one for causal LMs). Every token
    id must be in [0, V): replace padding with any valid id and mask the result afterwards.

    Divide by the *sampling* temperature for the policy, the reference and the old log-probs alike,
    otherwise the KL grows faster than it should (N-implementation-details blog, "Policy 1";
    rlhf-details c3).
    """
    _check_temperature(temperature)
    chunks = []
    for chunk_logits, chunk_tokens in _row_chunks(logits, tokens):
        z = _scaled(chunk_logits, temperature)
        picked = z.gather(-1, chunk_tokens.unsqueeze(-1)).squeeze(-1)
        chunks.append(picked - torch.logsumexp(z, dim=-1))
    if not chunks:
        out_dtype = torch.float32 if logits.dtype in _HALF_DTYPES else logits.dtype
        return logits.new_zeros(tokens.shape, dtype=out_dtype)
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy of softmax(logits / temperature), in nats.

    H_t = −Σ_v p_{t,v} log p_{t,v}.  Shapes: (B, T, V) → (B, T).

    Vocabulary entries with logit −inf (e.g. banned tokens) have p = 0 and contribute 0; their
    log p is replaced by 0 before the product so neither the value nor the gradient becomes
    0·(−inf) = NaN.
    """
    _check_temperature(temperature)
    chunks = []
    for (chunk_logits,) in _row_chunks(logits):
        logp = torch.log_softmax(_scaled(chunk_logits, temperature), dim=-1)
        p = logp.exp()
        chunks.append(-(p * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1))
    if not chunks:
        out_dtype = torch.float32 if logits.dtype in _HALF_DTYPES else logits.dtype
        return logits.new_zeros(logits.shape[:-1], dtype=out_dtype)
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
