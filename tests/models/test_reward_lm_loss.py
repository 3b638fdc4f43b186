"""The LM loss on the chosen response (`loss.lm_coef`): positions in the packed and separate
layouts by hand, equality with the plain causal LM on prompt + chosen, tied embeddings, and the
errors for backbones without a causal LM head."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.algos.rm_losses import chosen_lm_loss
from rlhfkit.config.common import TinyModelConfig
from rlhfkit.config.rm import RMModelConfig
from rlhfkit.models.reward import (RMInput, RewardModel, build_reward_model, collate_shared_prompt,
                                   load_reward_model)
from rlhfkit.models.tiny import build_tiny_causal_lm, tiny_model_config

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, vocab_size=200, tokenizer_lines=300,
                       max_positions=128)
CHOSEN = (1, 0, 3, 1)
"""Index of the chosen response in each test group: not always the first, so segment offsets matter."""



@pytest.fixture(scope="module")
def lm_and_tokenizer(task):
    torch.set_num_threads(1)
    return build_tiny_causal_lm(TINY, task.corpus(TINY.tokenizer_lines), seed=0)


def groups_for(model, task, k=(3, 2, 4, 2)):
    examples = task.sft_examples(len(k))
    return [[model.encode(e.prompt, r) for r in task.sample_demos(e.prompt, n, seed=1)] for e, n in zip(examples, k)]


def reference_nll(lm, x: RMInput) -> torch.Tensor:
    """Mean token NLL of x's response under the plain causal LM run on x's ids alone (prompt +
    response), from its full logits: position t − 1 predicts token t."""
    ids = torch.tensor([x.ids])
    logp = torch.log_softmax(lm(input_ids=ids).logits[0].double(), dim=-1)
    first = max(x.prompt_len, 1)
    targets = ids[0, first:]
    return -logp[first - 1 : -1].gather(-1, targets.unsqueeze(-1)).mean()


def test_shared_layout_lm_positions_by_hand():
    eos = 2
    group = [RMInput([10, 11, 12, 20, 21, eos], prompt_len=3), RMInput([10, 11, 12, 30, eos], prompt_len=3)]
    other = [RMInput([40, 50, eos], prompt_len=1), RMInput([40, 60, 61, 62, eos], prompt_len=1)]
    batch = collate_shared_prompt([group, other], pad_id=0, lm_response=[1, 0])
    # Row 0 = 10 11 12 | 20 21 E | 30 E: the prompt's last token (column 2) predicts 30, and 30
    # (column 6) predicts its EOS. Row 1 = 40 | 50 E | 60 61 62 E: column 0 predicts 50, 50 → E.
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 20, 21, eos, 30, eos]
    assert batch["lm_at"].tolist() == [[[0, 2], [0, 6]], [[1, 0], [1, 1]]]
    assert batch["lm_targets"].tolist() == [[30, eos], [50, eos]]
    assert batch["lm_mask"].tolist() == [[True, True], [True, True]]
    batch = collate_shared_prompt([other], pad_id=0, lm_response=[1])
    assert batch["lm_at"].tolist() == [[[0, 0], [0, 3], [0, 4], [0, 5]]]  # 40 → 60, 60 → 61, 61 → 62, 62 → E
    assert batch["lm_targets"].tolist() == [[60, 61, 62, eos]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_lm_loss_equals_the_causal_lm_on_prompt_plus_chosen(task, lm_and_tokenizer, attention):
    lm, tokenizer = lm_and_tokenizer
    lm.set_attn_implementation(attention)
    try:
        check_packed_lm_loss(task, lm, tokenizer)
    finally:
        lm.set_attn_implementation("sdpa")


def check_packed_lm_loss(task, lm, tokenizer):
    model = RewardModel.from_causal_lm(lm, tokenizer, lm_head=True)  # the same weights as `lm`
    groups = groups_for(model, task)
    batch = model.collate_groups(groups, CHOSEN)
    assert batch["attention_mask"].dim() == 4 and batch["input_ids"].shape[0] == len(groups)  # packed
    batch.pop("token_mask")
    mask = batch.pop("lm_mask")
    shapes = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    rewards, logprobs = model(**batch)
    hook.remove()
    # Logits only where the loss reads: G × (longest chosen response) states, not every position.
    longest = max(len(g[c].ids) - g[c].prompt_len for g, c in zip(groups, CHOSEN))
    assert shapes == [(len(groups), longest, 32)] and batch["input_ids"].numel() > 2 * len(groups) * longest
    assert rewards.shape == (11, 1)
    nll = chosen_lm_loss(logprobs, mask)
    expected = torch.stack([reference_nll(lm, g[c]) for g, c in zip(groups, CHOSEN)])
    torch.testing.assert_close(nll.double(), expected, rtol=1e-5, atol=1e-6)
    # Gradients agree as well, for the LM head and the trunk.
    params = [model.lm_head.weight, model.backbone.embed_tokens.weight]
    got = torch.autograd.grad(chosen_lm_loss(model(**batch)[1], mask).sum(), params)
    want = torch.autograd.grad(torch.stack([reference_nll(lm, g[c]) for g, c in zip(groups, CHOSEN)]).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_separate_rows_lm_loss_equals_the_causal_lm_on_the_truncated_sequence(task, lm_and_tokenizer):
    lm, tokenizer = lm_and_tokenizer
    model = RewardModel.from_causal_lm(lm, tokenizer, max_length=14, lm_head=True)
    groups = groups_for(model, task, k=(2, 3))
    shorter = [RMInput(groups[0][0].ids, prompt_len=0), groups[0][1]]  # a prompt truncated away entirely
    groups = [shorter, groups[1]]
    batch = model.collate_groups(groups, [0, 2])
    assert batch["attention_mask"].dim() == 2 and batch["input_ids"].shape[0] == 5  # one row per response
    mask = batch.pop("lm_mask")
    batch.pop("token_mask")
    nll = chosen_lm_loss(model(**batch)[1], mask)
    expected = torch.stack([reference_nll(lm, shorter[0]), reference_nll(lm, groups[1][2])])
    torch.testing.assert_close(nll.double(), expected, rtol=1e-5, atol=1e-6)
    # Without a prompt the first response token has no predecessor: one target fewer.
    assert int(mask[0].sum()) == len(shorter[0].ids) - 1


def test_tied_embeddings_are_reused_and_survive_save_and_load(tmp_path, task, lm_and_tokenizer):
    from transformers import AutoModelForCausalLM

    _, tokenizer = lm_and_tokenizer
    config = tiny_model_config(TINY, tokenizer)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    model = RewardModel.from_causal_lm(lm, tokenizer, lm_head=True)
    assert model.lm_head.weight is model.backbone.embed_tokens.weight
    assert len(list(model.parameters())) == len(list(model.backbone.parameters())) + 2  # + the reward head only
    groups = groups_for(model, task)
    batch = model.collate_groups(groups, CHOSEN)
    batch.pop("token_mask")
    mask = batch.pop("lm_mask")
    before = chosen_lm_loss(model(**batch)[1], mask)
    expected = torch.stack([reference_nll(lm, g[c]) for g, c in zip(groups, CHOSEN)])
    torch.testing.assert_close(before.double(), expected, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm", lm_head=True)
    assert loaded.lm_head.weight is loaded.backbone.embed_tokens.weight
    torch.testing.assert_close(chosen_lm_loss(loaded(**batch)[1], mask), before, rtol=1e-6, atol=1e-7)


def test_saved_rm_format_is_unchanged_and_an_untied_head_is_not_in_it(tmp_path, lm_and_tokenizer):
    from safetensors.torch import load_file

    lm, tokenizer = lm_and_tokenizer
    RewardModel.from_causal_lm(lm, tokenizer, lm_head=True).save(tmp_path / "with")
    RewardModel.from_causal_lm(lm, tokenizer).save(tmp_path / "without")
    assert sorted(p.name for p in (tmp_path / "with").iterdir()) == sorted(p.name for p in (tmp_path / "without").iterdir())
    keys = load_file(str(tmp_path / "with" / "model.safetensors")).keys()
    assert keys == load_file(str(tmp_path / "without" / "model.safetensors")).keys()
    assert not any("lm_head" in k for k in keys)
    assert load_reward_model(tmp_path / "with").lm_head is None
    with pytest.raises(ValueError, match=r"loss.lm_coef > 0 .* saved RM, which keeps no \(untied\) LM head"):
        load_reward_model(tmp_path / "with", lm_head=True)


def test_encoder_backbone_is_refused_naming_the_field(tmp_path, task):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"loss.lm_coef > 0 .* causal-LM backbone.*\['BertModel'\]"):
        build_reward_model(RMModelConfig(path=str(tmp_path / "bert")), task.corpus, 0, lm_head=True)
    # In memory too: a BERT-style tokenizer (no EOS, a separator) means pair encoding, no LM loss.
    tokenizer = type("Tok", (), {"chat_template": None, "eos_token_id": None, "sep_token_id": 3})()
    with pytest.raises(ValueError, match="loss.lm_coef > 0 .* BertModel with input format 'pair' is not one"):
        RewardModel(bert, tokenizer, lm_head=torch.nn.Linear(16, 64, bias=False))


def test_logit_transforms_and_missing_head_are_refused(lm_and_tokenizer):
    lm, tokenizer = lm_and_tokenizer
    lm.config.final_logit_softcapping = 30.0
    try:
        with pytest.raises(ValueError, match="final_logit_softcapping"):
            RewardModel.from_causal_lm(lm, tokenizer, lm_head=True)
    finally:
        lm.config.final_logit_softcapping = None
    model = RewardModel.from_causal_lm(lm, tokenizer)
    with pytest.raises(ValueError, match="built with its LM head"):
        model.collate_groups([[RMInput([5, 6, 2], prompt_len=1)]], [0])


def test_freezing_embeddings_freezes_an_untied_lm_head(task):
    model = build_reward_model(RMModelConfig(tiny=TINY, freeze_embeddings=True), task.corpus, 0, lm_head=True)
    assert not model.lm_head.weight.requires_grad and not model.backbone.embed_tokens.weight.requires_grad
    model = build_reward_model(RMModelConfig(tiny=TINY), task.corpus, 0, lm_head=True)
    assert model.lm_head.weight.requires_grad
