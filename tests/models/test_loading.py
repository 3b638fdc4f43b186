"""Loading causal LMs by path: float32 weights whatever the checkpoint's dtype."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.policy import critic_from_pretrained


def test_a_bf16_checkpoint_loads_in_float32_unless_asked(tmp_path):
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=100)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    assert {p.dtype for p in load_causal_lm(tmp_path).parameters()} == {torch.float32}
    assert {p.dtype for p in load_causal_lm(tmp_path, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in critic_from_pretrained(str(tmp_path)).parameters()} == {torch.float32}


def test_a_bf16_reward_model_loads_in_float32_and_scores(tmp_path):
    """A saved RM whose backbone was written in bf16 (its head is always float32) loads as float32
    by default; before, the bf16 trunk under the float32 head failed at the first score."""
    from rlhfkit.config.common import TinyModelConfig
    from rlhfkit.models.reward import RewardModel, load_reward_model
    from rlhfkit.models.tiny import build_tiny_causal_lm

    corpus = [f"review {i}: a fine film, I liked it {i % 7} times" for i in range(200)]
    lm, tokenizer = build_tiny_causal_lm(TinyModelConfig(hidden_size=32, num_layers=1, vocab_size=120), corpus, 0)
    RewardModel.from_causal_lm(lm, tokenizer).to(torch.bfloat16).save(tmp_path / "rm")
    rm = load_reward_model(tmp_path / "rm")
    assert {p.dtype for p in rm.parameters()} == {torch.float32}
    assert rm.score_texts(["a prompt"], ["a response"]).shape == (1, 1)
    assert {p.dtype for p in load_reward_model(tmp_path / "rm", dtype=torch.bfloat16).backbone.parameters()} == \
        {torch.bfloat16}
