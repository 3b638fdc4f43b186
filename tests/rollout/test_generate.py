"""Generation: reproducible under a seed, masks stop at EOS, behaviour log-probs match a forward pass."""

import torch

from rlhfkit.algos.logprobs import logprobs_from_logits
from rlhfkit.config.common import TinyModelConfig
from rlhfkit.data.collate import position_ids_from_mask
from rlhfkit.models.text import encode_prompt
from rlhfkit.models.tiny import build_tiny_causal_lm
from rlhfkit.rollout.generate import generate
from rlhfkit.tasks import get_task


def _setup():
    task = get_task("reviews", seed=0)
    model, tok = build_tiny_causal_lm(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, vocab_size=256,
                                                      tokenizer_lines=300), task.corpus(300), seed=0)
    prompts = [encode_prompt(tok, p.prompt) for p in task.prompts("eval", 6)]
    return model.eval(), tok, prompts


def _sample(model, tok, prompts, seed):
    torch.manual_seed(seed)
    return generate(model, prompts, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=12,
                    temperature=0.7)


def test_same_seed_same_samples_and_eos_masking():
    model, tok, prompts = _setup()
    a, b, c = _sample(model, tok, prompts, 1), _sample(model, tok, prompts, 1), _sample(model, tok, prompts, 2)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)
    for row, mask, done in zip(a.response_ids, a.response_mask, a.finished):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # one contiguous run from the start
        assert bool(done) == (tok.eos_token_id in row[:n].tolist())
        if done:
            assert row[n - 1] == tok.eos_token_id  # the EOS is the last real token


def test_behaviour_logprobs_equal_a_training_forward_pass():
    """The 'old' log-probs PPO reuses must equal log π/T from a left-padded forward pass (c3, c17)."""
    model, tok, prompts = _setup()
    rollout = _sample(model, tok, prompts, 3)
    ids, mask = rollout.sequences()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask)).logits
    prompt_len = rollout.prompt_ids.shape[1]
    response_logits = logits[:, prompt_len - 1 : -1]
    expected = logprobs_from_logits(response_logits, rollout.response_ids, 0.7).masked_fill(~rollout.response_mask, 0)
    torch.testing.assert_close(rollout.logprobs, expected, rtol=1e-4, atol=1e-5)
