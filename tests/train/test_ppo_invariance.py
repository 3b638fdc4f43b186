"""PPO invariances on a tiny random model: padding does not change log-probs, gradient
accumulation does not change the step, and the rollout's log-probs are the training pass's."""

import pytest
import torch

from rlhfkit.algos.logprobs import logprobs_from_logits
from rlhfkit.config.common import TinyModelConfig
from rlhfkit.data.collate import left_pad
from rlhfkit.models.policy import PolicyWithValueHead
from rlhfkit.rollout.generate import generate
from rlhfkit.train.ppo_update import Experience, LossSettings, Models, micro_weight, minibatch_step

VOCAB_WORDS = ["the", "room", "was", "great", "bad", "food", "and", "staff", "very", "clean", "."]


@pytest.fixture(scope="module")
def tiny():
    from rlhfkit.models.tiny import build_tiny_causal_lm

    corpus = [" ".join(VOCAB_WORDS[(i * 7 + j) % len(VOCAB_WORDS)] for j in range(12)) for i in range(200)]
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, vocab_size=64, max_positions=64)
    model, tokenizer = build_tiny_causal_lm(cfg, corpus, seed=0)
    model.eval()
    return model, tokenizer


class _NoAccelerator:
    """The three Accelerator methods the update uses, for a single CPU process."""

    device = torch.device("cpu")
    num_processes = 1

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _rollout(model, tokenizer, n=8, seed=0):
    torch.manual_seed(seed)
    prompts = [[5 + (i % 7)] * (2 + i % 4) for i in range(n)]  # lengths 2..5: real left padding
    return generate(model, prompts, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                    max_new_tokens=10, temperature=0.7)


def test_left_padded_logprobs_equal_unpadded(tiny):
    model, tokenizer = tiny
    policy = PolicyWithValueHead(model, with_value_head=False)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    responses = torch.tensor([[20, 21, 22], [23, 24, 25], [26, 27, 28]])
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    full_ids = torch.cat([ids, responses], 1)
    full_mask = torch.cat([mask, torch.ones_like(responses, dtype=torch.bool)], 1)
    with torch.no_grad():
        batched = logprobs_from_logits(policy(full_ids, full_mask, 3).logits, responses, 0.7)
        for row, prompt in enumerate(prompts):
            alone_ids = torch.tensor([prompt + responses[row].tolist()])
            alone = logprobs_from_logits(policy(alone_ids, torch.ones_like(alone_ids, dtype=torch.bool), 3).logits,
                                         responses[row:row + 1], 0.7)
            torch.testing.assert_close(batched[row], alone[0], rtol=1e-5, atol=1e-6)


def test_first_ratio_is_one(tiny):
    """c17: the behaviour log-probs of generation equal the training forward pass's (fp32)."""
    model, tokenizer = tiny
    rollout = _rollout(model, tokenizer)
    assert rollout.response_mask.sum() > 20
    ids, mask = rollout.sequences()
    with torch.no_grad():
        logits = PolicyWithValueHead(model, False)(ids, mask, rollout.response_ids.shape[1]).logits
    fresh = logprobs_from_logits(logits, rollout.response_ids, 0.7)
    ratio = torch.exp(torch.where(rollout.response_mask, fresh - rollout.logprobs, 0.0))
    assert float((ratio - 1).abs().max()) < 1e-5


def test_micro_weight_counts():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    micro = mask[:2]
    assert micro_weight("token_mean", micro, mask) == pytest.approx(4 / 10)
    assert micro_weight("seq_mean_token_mean", micro, mask) == pytest.approx(2 / 4)
    assert micro_weight("seq_mean_token_sum_norm", micro, mask) == pytest.approx(2 / 4)


def _experience(model, tokenizer):
    rollout = _rollout(model, tokenizer, seed=1)
    ids, mask = rollout.sequences()
    gen = torch.Generator().manual_seed(3)
    shape = rollout.logprobs.shape
    noise = lambda: torch.randn(shape, generator=gen).masked_fill(~rollout.response_mask, 0.0)  # noqa: E731
    # Old log-probs off the current policy, so the ratio and the clip are exercised.
    return Experience(ids, mask, rollout.response_ids, rollout.response_mask, rollout.logprobs + 0.3 * noise(),
                      rollout.logprobs, noise(), values=noise(), returns=noise())


@pytest.mark.parametrize("agg_mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_grad_accumulation_1x8_equals_8x1(tiny, agg_mode):
    """One minibatch of 8 as one micro-batch or eight micro-batches of 1: the same SGD step
    (SGD with lr 1, so the update is exactly −grad and a mis-scaled loss would show)."""
    import copy

    model, tokenizer = tiny
    exp = _experience(model, tokenizer)
    settings = LossSettings(clip_eps=0.2, value_clip_eps=0.2, vf_coef=0.1, entropy_coef=0.01, kl_loss_coef=0.04,
                            kl_estimator="k3", agg_mode=agg_mode, max_len=10, temperature=0.7, ptx_coef=0.0)
    after = []
    for micro in (8, 1):
        policy = PolicyWithValueHead(copy.deepcopy(model), with_value_head=True)
        with torch.no_grad():  # a non-zero head, the same in both runs, so the value loss reaches the trunk
            policy.value_head.weight.copy_(torch.linspace(-0.2, 0.2, policy.value_head.weight.numel()).view(1, -1))
        optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        models = Models(_NoAccelerator(), policy, optimizer, scheduler)
        stats = minibatch_step(models, exp, torch.arange(8), micro, settings, want_entropy=True)
        after.append(({k: v.detach().clone() for k, v in policy.state_dict().items()}, stats))
    (a, stats_a), (b, stats_b) = after
    start = model.state_dict()
    assert all(float((a["lm." + k] - start[k]).abs().max()) > 0 for k in start)  # every weight moved
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    assert stats_a["ppo/clipfrac"] > 0
    for key in ("loss/policy", "loss/value", "value/clipfrac", "ppo/ratio_max"):
        assert stats_a[key] == pytest.approx(stats_b[key], rel=1e-4, abs=1e-7), key
