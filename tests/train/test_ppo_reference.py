"""`kl.reference_path`: PPO that continues from an earlier PPO model keeps measuring its KL to the
SFT model (iterated RLHF), with or without LoRA; a reference with another vocabulary is refused."""

from __future__ import annotations

import shutil

import pytest
import torch

from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rundir import read_metrics
from rlhfkit.train.ppo import train_ppo
from rlhfkit.train.ppo_setup import build_policy
from tests.train.test_ppo_loop import QUICK, _cfg


@pytest.fixture(scope="module")
def ppo_model(sft_model, tmp_path_factory):
    """A policy that PPO has moved away from the SFT model (the previous round's PPO model)."""
    out = tmp_path_factory.mktemp("ppo-round1")
    train_ppo(_cfg(sft_model, out, *QUICK, "optim.lr=1e-3", "data.n_eval_prompts=0"))
    return out / "model"


def _batch(tokenizer):
    ids = torch.tensor([tokenizer.encode("a great film, I liked it")])
    return ids, torch.ones_like(ids, dtype=torch.bool)


def _logits(path, ids, mask):
    """The logits that predict the last 5 tokens, from the model at `path` loaded afresh."""
    return load_causal_lm(path)(input_ids=ids, attention_mask=mask.long()).logits[:, -6:-1]


@pytest.mark.parametrize("lora", [False, True])
def test_reference_is_the_model_at_reference_path(sft_model, ppo_model, lora):
    cfg = _cfg(ppo_model, "unused", f"policy.lora.enabled={str(lora).lower()}", f"kl.reference_path={sft_model}")
    policy, reference, tokenizer = build_policy(cfg, with_value_head=False)
    ids, mask = _batch(tokenizer)
    sft, start = _logits(sft_model, ids, mask), _logits(ppo_model, ids, mask)
    assert (sft - start).abs().max() > 1e-2  # the two models differ, so the check below can fail
    torch.testing.assert_close(reference.logits(ids, mask, 5), sft, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(policy(ids, mask, 5).logits, start, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in reference.model.parameters())


def test_default_reference_is_the_starting_policy(ppo_model):
    policy, reference, tokenizer = build_policy(_cfg(ppo_model, "unused"), with_value_head=False)
    ids, mask = _batch(tokenizer)
    torch.testing.assert_close(reference.logits(ids, mask, 5), _logits(ppo_model, ids, mask), rtol=1e-5, atol=1e-5)


def test_kl_is_measured_to_the_reference_from_the_first_step(sft_model, ppo_model, tmp_path):
    """Starting from the round-1 PPO model, the first rollout's KL is ≈ 0 to itself and clearly
    positive to the SFT model."""
    first_kl = {}
    for name, extra in (("self", []), ("sft", [f"kl.reference_path={sft_model}"])):
        out = tmp_path / name
        train_ppo(_cfg(ppo_model, out, *QUICK, "max_steps=1", "data.n_eval_prompts=0", *extra))
        first_kl[name] = read_metrics(out)[-1]["kl/ref"]
    assert abs(first_kl["self"]) < 1e-4, first_kl
    assert first_kl["sft"] > 0.05, first_kl


def test_reference_with_another_vocabulary_is_refused(sft_model, tmp_path):
    other = tmp_path / "other-tokenizer"
    shutil.copytree(sft_model, other)
    tokenizer = load_tokenizer(other)
    tokenizer.add_tokens(["<never-seen>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="kl.reference_path .*tokenizer differs"):
        build_policy(_cfg(sft_model, "unused", f"kl.reference_path={other}"), with_value_head=False)


def test_reference_refresh_and_reference_path_exclude_each_other(sft_model):
    with pytest.raises(Exception, match="kl.ref_refresh_every would replace the model of kl.reference_path"):
        _cfg(sft_model, "unused", f"kl.reference_path={sft_model}", "kl.ref_refresh_every=5")
