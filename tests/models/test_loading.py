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
