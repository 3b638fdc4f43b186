"""Log-probs and entropy from logits, against the textbook formulas in float64."""

import math

import pytest
import torch

from rlhfkit.algos import logprobs as logprobs_module
from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_from_logits, scale_logits_


def _logits(b=3, t=5, v=11, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(b, t, v, generator=gen, dtype=dtype), torch.randint(0, v, (b, t), generator=gen)


def test_logprobs_hand_worked():
    logits = torch.tensor([[[1.0, 2.0, 1.0, 1.0]]], dtype=torch.float64)
    out = logprobs_from_logits(logits, torch.tensor([[1]]))
    assert out.item() == pytest.approx(2.0 - math.log(3 * math.e + math.e**2), rel=1e-12)
    # Temperature 2 halves the logits before the softmax.
    out_t = logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0)
    assert out_t.item() == pytest.approx(0.5 - math.log(3 * math.exp(0.5) + math.exp(1.0)), rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_one_hot_reference(temperature):
    logits, tokens = _logits()
    reference = (torch.log_softmax(logits / temperature, -1) * torch.nn.functional.one_hot(tokens, 11)).sum(-1)
    out = logprobs_from_logits(logits, tokens, temperature)
    assert out.shape == (3, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)


def test_logprobs_gradient_matches_reference():
    logits, tokens = _logits()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    logprobs_from_logits(a, tokens, 0.7).sum().backward()
    torch.log_softmax(b / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_half_precision_logits_are_computed_and_returned_in_fp32():
    logits, tokens = _logits()
    bf16 = logits.to(torch.bfloat16)
    out = logprobs_from_logits(bf16, tokens)
    assert out.dtype == torch.float32
    # Exact fp32 math on the bf16-rounded logits: only the fp32 rounding of the result remains.
    reference = torch.log_softmax(bf16.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.double(), reference, rtol=1e-6, atol=1e-5)
    assert entropy_from_logits(bf16).dtype == torch.float32
    assert logprobs_from_logits(logits.float(), tokens).dtype == torch.float32


def test_entropy_matches_formula():
    logits, _ = _logits()
    p = torch.softmax(logits / 0.7, -1)
    expected = -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits, 0.7), expected, rtol=1e-10, atol=1e-12)
    uniform = torch.zeros(1, 1, 8, dtype=torch.float64)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(8), rel=1e-12)


def test_entropy_with_banned_tokens_is_finite_with_finite_gradient():
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")]]], dtype=torch.float64, requires_grad=True)
    h = entropy_from_logits(logits)
    assert h.item() == pytest.approx(math.log(2), rel=1e-12)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # At the uniform distribution over the allowed tokens the entropy is maximal: zero gradient.
    torch.testing.assert_close(logits.grad, torch.zeros_like(logits.grad))


def test_bad_temperature_and_empty_batch():
    logits, tokens = _logits()
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, tokens, 0.0)
    assert logprobs_from_logits(logits[:0], tokens[:0]).shape == (0, 5)
    assert entropy_from_logits(logits[:0]).shape == (0, 5)


def test_chunks_of_rows_give_the_one_pass_result(monkeypatch):
    logits, tokens = _logits(b=5)
    whole = logprobs_from_logits(logits, tokens, 0.7), entropy_from_logits(logits, 0.7)
    monkeypatch.setattr(logprobs_module, "CHUNK_ELEMENTS", 2 * 5 * 11)  # 2 rows a chunk: chunks of 2, 2, 1
    chunked = logprobs_from_logits(logits, tokens, 0.7), entropy_from_logits(logits, 0.7)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    reference = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(chunked[0], reference, rtol=1e-12, atol=1e-12)


def test_scale_logits_in_place_equals_division_and_keeps_gradients():
    logits, tokens = _logits(dtype=torch.float32)
    expected = logits / 0.7
    weight = torch.ones((), requires_grad=True)
    fresh = logits * weight  # a tensor whose producer's backward does not read it
    scaled = scale_logits_(fresh, 0.7)
    assert scaled.data_ptr() == fresh.data_ptr()  # in place: no copy of (B, T, V)
    torch.testing.assert_close(scaled, expected, rtol=0, atol=0)
    logprobs_from_logits(scaled, tokens).sum().backward()
    ref_weight = torch.ones((), requires_grad=True)
    logprobs_from_logits(logits * ref_weight, tokens, 0.7).sum().backward()
    torch.testing.assert_close(weight.grad, ref_weight.grad, rtol=1e-6, atol=1e-6)
    bf16 = logits.to(torch.bfloat16)
    up = scale_logits_(bf16, 0.7)
    assert up.dtype == torch.float32 and torch.equal(bf16, logits.to(torch.bfloat16))  # half: upcast copy
