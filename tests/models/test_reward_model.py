"""The reward model: head init, last-token reading, encoding, save/load, normalisation, ensembles,
freezing and LoRA — on a tiny Llama built in a few seconds."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from rlhfkit.config.common import LoraConfig, TinyModelConfig
from rlhfkit.config.rm import RMModelConfig
from rlhfkit.models.reward import (RewardEnsemble, RewardModel, build_reward_model, last_token_index,
                                   load_reward_model, resolve_input_format)

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, vocab_size=200, tokenizer_lines=300,
                       max_positions=128)



@pytest.fixture(scope="module")
def examples(task):
    return task.sft_examples(24)


def tiny_rm(task, seed=0, **kwargs) -> RewardModel:
    torch.set_num_threads(1)
    return build_reward_model(RMModelConfig(tiny=TINY, **kwargs), task.corpus, seed)


@pytest.fixture(scope="module")
def rm(task):
    return tiny_rm(task)


def test_last_token_index_by_hand():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert last_token_index(mask).tolist() == [2, 0, 4]


def test_head_init_statistics():
    # d = 1023 → std 1/√1024 = 1/32; 1023·64 weights give the sample std to about ±0.3 %.
    torch.manual_seed(0)
    backbone = torch.nn.Module()
    backbone.config = type("Cfg", (), {"hidden_size": 1023})()
    backbone.forward = lambda **kw: None
    tokenizer = type("Tok", (), {"chat_template": None, "eos_token_id": 1, "sep_token_id": None})()
    model = RewardModel(backbone, tokenizer, num_heads=64)
    weight = model.head.weight.detach().double()
    assert weight.shape == (64, 1023)
    assert abs(weight.std().item() - 1 / 32) < 0.01 * (1 / 32)
    assert abs(weight.mean().item()) < 4 * (1 / 32) / math.sqrt(weight.numel())
    assert torch.equal(model.head.bias, torch.zeros(64))
    assert torch.equal(model.norm_gain, torch.ones(64)) and torch.equal(model.norm_bias, torch.zeros(64))


def test_plain_encoding_is_prompt_then_response_then_eos(rm, examples):
    ex = examples[0]
    tok = rm.tokenizer
    expected = tok(ex.prompt, add_special_tokens=False)["input_ids"] + tok(ex.response, add_special_tokens=False)[
        "input_ids"] + [tok.eos_token_id]
    assert rm.input_format == "plain"
    assert rm.encode(ex.prompt, ex.response).ids == expected
    assert rm.encode(ex.prompt, ex.response, finished=False).ids == expected[:-1]


def test_reward_read_at_last_token_is_invariant_to_right_padding(rm, examples):
    inputs = [rm.encode(e.prompt, e.response) for e in examples[:6]]
    together = rm(**rm.collate(inputs))
    alone = torch.cat([rm(**rm.collate([x])) for x in inputs])
    assert together.shape == (6, 1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    # Garbage in the padded positions changes nothing either.
    batch = rm.collate(inputs)
    batch["input_ids"] = torch.where(batch["attention_mask"], batch["input_ids"], 7)
    torch.testing.assert_close(rm(**batch), together, rtol=1e-5, atol=1e-6)


def test_score_texts_matches_forward_in_input_order(rm, examples):
    prompts, responses = [e.prompt for e in examples], [e.response for e in examples]
    scores = rm.score_texts(prompts, responses, normalized=False, batch_size=5)
    for i in (0, 7, 23):
        one = rm(**rm.collate([rm.encode(prompts[i], responses[i])]))
        torch.testing.assert_close(scores[i], one[0], rtol=1e-5, atol=1e-6)


def test_normalisation_gives_mean_0_std_1_on_its_samples(task, examples):
    model = tiny_rm(task, num_heads=2)
    prompts, responses = [e.prompt for e in examples], [e.response for e in examples]
    gain, bias = model.fit_normalization(prompts, responses, target_mean=0.0, target_std=1.0)
    scores = model.score_texts(prompts, responses).double()
    assert scores.mean(0).abs().max().item() < 1e-5
    assert (scores.std(0, correction=0) - 1).abs().max().item() < 1e-5
    raw = model.score_texts(prompts, responses, normalized=False).double()
    expected_gain = 1 / raw.std(0, correction=0)
    torch.testing.assert_close(torch.tensor(gain, dtype=torch.float64), expected_gain, rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(bias, dtype=torch.float64), -expected_gain * raw.mean(0), rtol=1e-4,
                               atol=1e-6)


def test_save_load_round_trip_gives_identical_scores(tmp_path, task, examples):
    model = tiny_rm(task, seed=3, num_heads=2)
    prompts, responses = [e.prompt for e in examples], [e.response for e in examples]
    model.set_normalization(torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 3.0]))
    before = model.score_texts(prompts, responses)
    model.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").exists() and (tmp_path / "rm" / "reward_head.safetensors").exists()
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.num_heads == 2 and loaded.input_format == "plain" and loaded.max_length == model.max_length
    assert torch.equal(loaded.score_texts(prompts, responses), before)
    assert torch.equal(loaded.score_texts(prompts, responses, normalized=False),
                       model.score_texts(prompts, responses, normalized=False))
    # Normalised = raw · gain + bias, per head.
    raw = model.score_texts(prompts, responses, normalized=False)
    torch.testing.assert_close(before, raw * torch.tensor([2.0, 0.5]) + torch.tensor([-1.0, 3.0]))


def test_load_rejects_a_plain_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward_config.json"):
        load_reward_model(tmp_path)


def test_input_format_resolution_and_errors(rm):
    tok = rm.tokenizer
    assert resolve_input_format(tok, "auto") == "plain"
    with pytest.raises(ValueError, match="chat template"):
        resolve_input_format(tok, "chat")
    with pytest.raises(ValueError, match="valid: auto, chat, plain, pair"):
        resolve_input_format(tok, "xml")


def test_ensemble_combination_rules_by_hand(task, examples):
    members = [tiny_rm(task, seed=s) for s in (1, 2)] + [tiny_rm(task, seed=4, num_heads=2)]
    prompts, responses = [e.prompt for e in examples[:5]], [e.response for e in examples[:5]]
    for m, (g, b) in zip(members, [(1.0, 0.5), (2.0, -1.0), ([1.0, 3.0], [0.0, 0.25])]):
        m.set_normalization(torch.tensor(g), torch.tensor(b))
    per = [m.score_texts(prompts, responses) for m in members]
    rows = [per[0][:, 0], per[1][:, 0], per[2][:, 0], per[2][:, 1]]  # members in order, heads in order
    for mode, kw in [("min", {}), ("mean", {}), ("weighted_sum", {"weights": [0.1, 0.2, 0.3, 0.4]}),
                     ("mean_minus_std", {"uncertainty_coef": 0.5})]:
        got = RewardEnsemble(members, mode, **kw).score_texts(prompts, responses)
        for n in range(5):
            xs = [float(r[n]) for r in rows]
            mean = sum(xs) / 4
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / 4)
            weighted = 0.1 * xs[0] + 0.2 * xs[1] + 0.3 * xs[2] + 0.4 * xs[3]
            expected = {"min": min(xs), "mean": mean, "weighted_sum": weighted, "mean_minus_std": mean - 0.5 * std}[mode]
            assert got[n].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="3 weights for 4 rewards"):
        RewardEnsemble(members, "weighted_sum", weights=[1.0, 1.0, 1.0])


def test_freezing_embeddings_and_lowest_layers(task):
    model = tiny_rm(task, freeze_embeddings=True, freeze_layers=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "backbone.embed_tokens.weight" in frozen
    assert any(n.startswith("backbone.layers.0.") for n in frozen)
    assert not any(n.startswith("backbone.layers.1.") for n in frozen)
    assert model.head.weight.requires_grad
    with pytest.raises(ValueError, match="backbone has 2 blocks"):
        tiny_rm(task, freeze_layers=3)


def test_lora_trains_adapters_and_head_and_saves_merged(tmp_path, task, examples):
    model = tiny_rm(task, lora=LoraConfig(enabled=True, r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    # Move the adapters off their zero init so the merge matters.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    prompts, responses = [e.prompt for e in examples[:8]], [e.response for e in examples[:8]]
    before = model.score_texts(prompts, responses)
    model.save(tmp_path / "rm")
    assert any("lora_" in n for n, _ in model.named_parameters())  # the live model keeps its adapters
    loaded = load_reward_model(tmp_path / "rm")
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(loaded.score_texts(prompts, responses), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_rows_give_the_rewards_of_separate_rows(task, examples, attention):
    model = tiny_rm(task, seed=5)
    model.backbone.set_attn_implementation(attention)
    groups = [[model.encode(e.prompt, r) for r in task.sample_demos(e.prompt, k, seed=1)]
              for e, k in zip(examples[:4], (3, 2, 4, 2))]
    batch = model.collate_groups(groups)
    assert batch["attention_mask"].dim() == 4 and batch["input_ids"].shape[0] == 4  # one row per group
    # The prompt runs once: a row holds P + Σ responses tokens, fewer than the separate rows.
    assert int(batch["token_mask"].sum()) < sum(len(x.ids) for g in groups for x in g)
    batch.pop("token_mask")
    shared = model(**batch)
    separate = torch.cat([model(**model.collate([x])) for g in groups for x in g])
    assert shared.shape == (11, 1)
    torch.testing.assert_close(shared, separate, rtol=1e-4, atol=1e-5)
    # Gradients agree as well (the loss sees the same function of the weights).
    g_shared = torch.autograd.grad(model(**batch).sum(), model.backbone.embed_tokens.weight)[0]
    g_separate = torch.autograd.grad(
        sum(model(**model.collate([x])).sum() for g in groups for x in g), model.backbone.embed_tokens.weight)[0]
    torch.testing.assert_close(g_shared, g_separate, rtol=1e-4, atol=1e-5)


def test_truncated_prompts_fall_back_to_separate_rows(task, examples):
    model = tiny_rm(task)
    model.max_length = 12
    group = [model.encode(examples[0].prompt, r) for r in ("good .", "a much longer response that is cut .")]
    assert group[0].prompt_len != group[1].prompt_len
    batch = model.collate_groups([group])
    assert batch["attention_mask"].dim() == 2 and batch["input_ids"].shape[0] == 2


def test_an_encoder_with_an_eos_token_is_never_packed_with_a_shared_prompt(rm):
    from transformers import RobertaConfig, RobertaModel

    from rlhfkit.models.reward import is_causal_trunk

    torch.manual_seed(0)
    encoder = RobertaModel(RobertaConfig(vocab_size=rm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, pad_token_id=0))
    assert is_causal_trunk(rm.backbone) and not is_causal_trunk(encoder)
    roberta_rm = RewardModel(encoder, rm.tokenizer, input_format="plain")  # the tiny tokenizer has an EOS
    assert roberta_rm.input_format == "plain" and not roberta_rm.can_share_prompt and rm.can_share_prompt


def test_a_critic_from_the_rm_needs_the_policys_tokenizer_and_a_causal_trunk(rm, task):
    from transformers import RobertaConfig, RobertaModel

    from rlhfkit.models.policy import critic_from_reward_model

    critic = critic_from_reward_model(rm, rm.tokenizer)
    torch.testing.assert_close(critic.head.weight, rm.head.weight[:1], rtol=0, atol=0)
    other_tiny = TinyModelConfig(**{**TINY.model_dump(), "vocab_size": 150})
    other_vocab = build_reward_model(RMModelConfig(tiny=other_tiny), task.corpus, 0)
    with pytest.raises(ValueError, match="tokenizer is not the policy's"):
        critic_from_reward_model(other_vocab, rm.tokenizer)
    torch.manual_seed(0)
    encoder = RobertaModel(RobertaConfig(vocab_size=rm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, pad_token_id=0))
    with pytest.raises(ValueError, match="trunk is not causal"):
        critic_from_reward_model(RewardModel(encoder, rm.tokenizer, input_format="plain"), rm.tokenizer)


def test_ensemble_scores_in_forward_passes_of_the_given_batch_size(rm, examples, monkeypatch):
    prompts, responses = [e.prompt for e in examples[:5]], [e.response for e in examples[:5]]
    ensemble = RewardEnsemble([rm, rm])
    whole = ensemble.score_all(prompts, responses)
    calls, forward = [], rm.forward
    monkeypatch.setattr(rm, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    in_pairs = ensemble.score_all(prompts, responses, batch_size=2)
    assert len(calls) == 2 * 3  # two members × ⌈5 / 2⌉ batches
    torch.testing.assert_close(in_pairs, whole, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory, task):
    """A saved 2-head tiny RM (plain format, max_length 100) to continue from."""
    path = tmp_path_factory.mktemp("saved") / "rm"
    tiny_rm(task, num_heads=2, max_length=100).save(path)
    return str(path)


@pytest.mark.parametrize("field, value, saved", [("num_heads", 1, 2), ("num_heads", 3, 2),
                                                 ("input_format", "chat", "plain")])
def test_continuing_from_a_saved_rm_refuses_another_head_count_or_format(task, saved_rm, field, value, saved):
    with pytest.raises(ValueError, match=f"model.{field}={value} but the saved reward model .* has {field}={saved}"):
        build_reward_model(RMModelConfig(path=saved_rm, **{field: value}), task.corpus, 0)


def test_continuing_from_a_saved_rm_takes_unset_fields_and_honours_max_length(task, saved_rm):
    kept = build_reward_model(RMModelConfig(path=saved_rm), task.corpus, 0)
    assert (kept.num_heads, kept.input_format, kept.max_length) == (2, "plain", 100)
    same = build_reward_model(RMModelConfig(path=saved_rm, num_heads=2, input_format="plain", max_length=64),
                              task.corpus, 0)
    assert (same.num_heads, same.input_format, same.max_length) == (2, "plain", 64)
    assert torch.equal(same.head.weight, kept.head.weight)  # the saved head, not a fresh one
    with pytest.raises(ValueError, match="model.max_length=200 exceeds the 128 positions of the backbone"):
        build_reward_model(RMModelConfig(path=saved_rm, max_length=200), task.corpus, 0)


def test_a_fresh_head_on_an_hf_backbone_keeps_max_length_within_its_positions(task, saved_rm):
    """The saved RM's directory is also a plain HF backbone (128 positions): without a config value
    the truncation length is capped there, not left at 512 (an index error at the first long input)."""
    backbone = Path(saved_rm).parent / "backbone"
    shutil.copytree(saved_rm, backbone, ignore=shutil.ignore_patterns("reward_*"))
    assert build_reward_model(RMModelConfig(path=str(backbone)), task.corpus, 0).max_length == 128
    assert build_reward_model(RMModelConfig(path=str(backbone), max_length=64), task.corpus, 0).max_length == 64
    with pytest.raises(ValueError, match="model.max_length=200 exceeds the 128 positions of the backbone"):
        build_reward_model(RMModelConfig(path=str(backbone), max_length=200), task.corpus, 0)
