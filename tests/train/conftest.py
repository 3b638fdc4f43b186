"""Shared fixtures of the PPO tests."""

import pytest

from rlhfkit.config.base import load_config
from rlhfkit.config.sft import SFTConfig


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """A tiny SFT policy on the reviews task, trained once per test session (~40 s of CPU)."""
    from rlhfkit.train.sft import train_sft

    out = tmp_path_factory.mktemp("ppo-sft")
    cfg = load_config(SFTConfig, None, [
        "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.vocab_size=512",
        "model.tiny.tokenizer_lines=1500", "data.n_train=800", "data.n_eval=32", "epochs=2",
        "eval.n_sample_prompts=0", "run.eval_every=1000", "run.save_every=1000", "run.progress=false",
        f"run.out_dir={out}"])
    train_sft(cfg)
    return out / "model"
