"""Reward-model training with an LM loss on the chosen response (`loss.lm_coef`): config checks,
the layout of the chosen response's targets, accumulation invariance, and a short run in which
the chosen responses' NLL falls while the preference is learnt."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config.base import ConfigError, load_config
from rlhfkit.config.common import RunConfig, TinyModelConfig
from rlhfkit.config.rm import RMConfig, RMModelConfig
from rlhfkit.data import PreferencePair, write_records
from rlhfkit.models.reward import RMInput, build_reward_model
from rlhfkit.train import rm as R
from rlhfkit.train import rm_data as D
from rlhfkit.train.common import BatchPlan, make_accelerator

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, vocab_size=200, tokenizer_lines=300,
                       max_positions=128)



@pytest.fixture(scope="module")
def lm_rm(task):
    torch.set_num_threads(1)
    return build_reward_model(RMModelConfig(tiny=TINY), task.corpus, 0, lm_head=True)


@pytest.mark.parametrize("override, message", [
    (["loss.lm_coef=-0.5"], "greater than or equal to 0"),
    (["loss.lm_coef=0.5", "model.input_format=pair"], "loss.lm_coef > 0 needs a causal-LM backbone"),
])
def test_bad_lm_coef_is_rejected_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RMConfig, None, override)


def fake_group(ranks, lengths):
    inputs = tuple(RMInput(list(range(2, 2 + n))) for n in lengths)
    return D.Group("p", tuple(f"r{i}" for i in range(len(ranks))), (True,) * len(ranks), inputs, tuple(ranks))


def test_group_batch_points_the_lm_loss_at_the_best_ranked_response(lm_rm):
    # prompt_len 0 (unknown) → one row per response and no prompt state: the first response
    # token is not predicted. Group 1 (ranks 2, 1): response 1 = row 1, ids 2..6. Group 2 (ranks
    # 1, 3, 1: a tie for best) takes its first best, response 0 = row 2, ids 2..5.
    groups = [fake_group((2, 1), (3, 5)), fake_group((1, 3, 1), (4, 2, 6))]
    batch, layout = R.group_batch(groups, lm_rm, lm=True)
    assert batch["lm_at"][0].tolist() == [[1, 0], [1, 1], [1, 2], [1, 3]]
    assert batch["lm_targets"][0].tolist() == [3, 4, 5, 6]
    assert batch["lm_at"][1, :3].tolist() == [[2, 0], [2, 1], [2, 2]]
    assert batch["lm_targets"][1, :3].tolist() == [3, 4, 5]
    assert layout["lm_mask"].tolist() == [[True] * 4, [True] * 3 + [False]]
    plain, layout = R.group_batch(groups, lm_rm)
    assert "lm_at" not in plain and layout["lm_mask"] is None


def _one_sgd_step(model, groups, micro):
    model = copy.deepcopy(model)
    cfg = load_config(RMConfig, None, [f"micro_batch_size={micro}", "batch_size=8", "optim.max_grad_norm=null",
                                       "loss.lm_coef=0.5"])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    stats = R.rm_step(model, optimizer, scheduler, make_accelerator(RunConfig()), groups, list(range(8)),
                      BatchPlan.make(8, micro, 1), cfg, model)
    return model, stats


def test_lm_loss_gradient_accumulation_1x8_equals_8x1(task, lm_rm):
    groups = []
    for p in task.prompts("train", 8):
        texts = list(dict.fromkeys(task.sample_demos(p.prompt, 3, seed=0)))
        inputs = tuple(lm_rm.encode(p.prompt, t) for t in texts)
        groups.append(D.Group(p.prompt, tuple(texts), (True,) * len(texts), inputs, tuple(range(1, len(texts) + 1))))
    whole, stats_whole = _one_sgd_step(lm_rm, groups, 8)
    split, stats_split = _one_sgd_step(lm_rm, groups, 1)
    assert stats_whole["lm_loss"] == pytest.approx(stats_split["lm_loss"], rel=1e-5)
    assert stats_whole["loss"] == pytest.approx(stats_split["loss"], rel=1e-5)
    # Random init: the chosen responses' NLL is about ln V.
    assert stats_whole["lm_loss"] == pytest.approx(math.log(len(lm_rm.tokenizer)), abs=0.2)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], value, rtol=1e-4, atol=1e-6)
    moved = (whole.lm_head.weight - lm_rm.lm_head.weight).abs().max().item()
    assert moved > 1e-3  # the LM head is trained by the step


def test_short_run_lowers_the_chosen_nll_and_learns_the_preference(tmp_path, task):
    # Chosen: a task demonstration; rejected: the same text ending "…, and it was awful .".
    # One epoch, so every step's train/lm_loss is measured on responses not trained on yet.
    pairs = []
    for n, p in enumerate(task.prompts("train", 480)):
        good = task.sample_demos(p.prompt, 1, seed=n)[0]
        pairs.append(PreferencePair(prompt=p.prompt, chosen=good, rejected=good.rstrip(" .") + " , and it was awful ."))
    write_records(tmp_path / "pairs.jsonl", pairs)
    settings = {"model.path": "null", "model.tiny.hidden_size": 32, "model.tiny.num_layers": 2,
                "model.tiny.num_heads": 2, "model.tiny.vocab_size": 200, "model.tiny.tokenizer_lines": 300,
                "data.train_path": str(tmp_path / "pairs.jsonl"), "data.eval_fraction": 0.1, "batch_size": 16,
                "micro_batch_size": 16, "epochs": 1, "optim.lr": 3e-3, "loss.lm_coef": 1.0,
                "run.out_dir": str(tmp_path / "run"), "run.progress": False, "run.num_threads": 1,
                "run.log_every": 1, "run.eval_every": 1000, "normalize.source": "none"}
    summary = R.train_rm(load_config(RMConfig, None, [f"{k}={v}" for k, v in settings.items()]))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    nll = [r["train/lm_loss"] for r in rows]
    assert len(nll) == summary["steps"] == 27
    assert nll[0] == pytest.approx(math.log(200), abs=0.2)  # ≈ ln V at initialisation
    # This run: 5.31 → 4.72 (first / last three 5.27 / 4.73).
    assert sum(nll[-3:]) / 3 < sum(nll[:3]) / 3 - 0.3
    assert summary["eval_accuracy"] > 0.9 and summary["eval_pairs"] == 48
    assert max(r["train/loss"] for r in rows[-5:]) < 0.1
    # The saved RM directory is the usual one: no LM head in it.
    model_dir = tmp_path / "run" / "model"
    assert not any("lm_head" in k for k in load_file(str(model_dir / "model.safetensors")))


def test_resume_with_the_lm_loss_gives_the_same_weights_and_lm_head(tmp_path, task):
    pairs = [PreferencePair(prompt=p.prompt, chosen=t[0], rejected=t[1])
             for p in task.prompts("train", 40) for t in [task.sample_demos(p.prompt, 2, seed=3)] if t[0] != t[1]]
    write_records(tmp_path / "pairs.jsonl", pairs)
    settings = {"model.path": "null", "model.tiny.hidden_size": 32, "model.tiny.num_layers": 2,
                "model.tiny.num_heads": 2, "model.tiny.vocab_size": 200, "model.tiny.tokenizer_lines": 300,
                "data.train_path": str(tmp_path / "pairs.jsonl"), "batch_size": 8, "micro_batch_size": 4,
                "max_steps": 4, "optim.lr": 3e-3, "loss.lm_coef": 0.5, "run.progress": False,
                "run.num_threads": 1, "run.eval_every": 2, "run.save_every": 2, "normalize.source": "none",
                "eval.early_stopping.keep_best": False}

    def run(name, **extra):
        overrides = {**settings, "run.out_dir": str(tmp_path / name), **extra}
        return R.train_rm(load_config(RMConfig, None, [f"{k}={v}" for k, v in overrides.items()]))

    run("a")
    assert run("b", **{"run.stop_after_steps": 2}) == {"stopped_at_step": 2}
    run("b")
    a, b = (torch.load(tmp_path / n / "checkpoints" / "step-00000004" / "pytorch_model.bin") for n in "ab")
    assert "lm_head.weight" in a and a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in "ab"}
    assert [r["train/lm_loss"] for r in rows["a"]] == [r["train/lm_loss"] for r in rows["b"]]
