"""Tiny models built from config: a BPE tokenizer trained on the task's text and a small Llama or
GPT-2, so tests and the demo run offline on a laptop CPU."""

from __future__ import annotations

from rlhfkit.config.common import TinyModelConfig

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def train_tokenizer(corpus: list[str], vocab_size: int, max_length: int):
    """Train a byte-pair-encoding tokenizer on `corpus` (Metaspace pre-tokenizer, so words keep a
    leading '▁' and a prompt and its response can be tokenised apart and concatenated)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def tiny_model_config(cfg: TinyModelConfig, tokenizer):
    """A transformers config for the tiny architecture, sized to the tokenizer."""
    from transformers import GPT2Config, LlamaConfig

    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    if cfg.arch == "llama":
        return LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size or (cfg.hidden_size * 8 // 3),
            max_position_embeddings=cfg.max_positions, tie_word_embeddings=False, **ids,
        )
    return GPT2Config(
        vocab_size=len(tokenizer), n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
        n_inner=cfg.intermediate_size or 4 * cfg.hidden_size, n_positions=cfg.max_positions,
        tie_word_embeddings=False, **ids,
    )


def build_tiny_causal_lm(cfg: TinyModelConfig, corpus: list[str], seed: int):
    """(model, tokenizer): a freshly initialised causal LM and its tokenizer, deterministic in `seed`."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = train_tokenizer(corpus, cfg.vocab_size, cfg.max_positions)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_model_config(cfg, tokenizer))
    return model, tokenizer
