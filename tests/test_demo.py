"""A reduced `rlhfkit demo`: every headline figure moves the right way against the gold judge."""

import json

import pytest
import yaml

from rlhfkit.config.base import load_config
from rlhfkit.config.demo import DemoConfig
from rlhfkit.demo import run_demo
from rlhfkit.rundir import read_metrics

REDUCED = [
    "sft.data.n_train=2400", "sft.epochs=3", "sft.eval.n_sample_prompts=32",
    "sampling.n_train_prompts=300", "sampling.n_eval_prompts=60",
    "rm.normalize.n_samples=64", "rm.epochs=2",
    "ppo.max_steps=15", "ppo.data.n_eval_prompts=32",
    "eval.n_prompts=160",
]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_reduced_demo_aligns_the_policy(tmp_path):
    cfg = load_config(DemoConfig, None, REDUCED)
    summary = run_demo(cfg, tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("gold_win_rate_vs_sft", "gold_reward_sft", "gold_reward_ppo", "kl_to_ref", "rm_accuracy",
                "rm_bayes_ceiling", "report"):
        assert key in saved, key
    # PPO against the trained RM raises the gold reward well above SFT's (recorded: −1.07 → −0.67).
    assert summary["gold_reward_ppo"] > summary["gold_reward_sft"] + 0.2, summary
    assert summary["gold_win_rate_vs_sft"] > 0.55, summary
    assert 0 < summary["kl_to_ref"] < 6, summary
    assert 0.55 < summary["rm_accuracy"] <= 1.0 and summary["rm_accuracy"] > 0.75 * summary["rm_bayes_ceiling"], summary
    assert (tmp_path / "report.html").stat().st_size > 10_000


TINY_PIPELINE = [
    "sft.data.n_train=300", "sft.epochs=1", "sft.eval.n_sample_prompts=8", "sampling.n_train_prompts=40",
    "sampling.n_eval_prompts=16", "rm.normalize.n_samples=32", "ppo.max_steps=2", "ppo.rollout_batch_size=16",
    "ppo.minibatch_size=8", "ppo.microbatch_size=8", "ppo.data.n_eval_prompts=8", "ppo.data.n_train_prompts=64",
    "eval.n_prompts=16", "sft.run.progress=false", "rm.run.progress=false", "ppo.run.progress=false",
]


def test_iterated_rounds_grow_the_preference_data_and_continue_ppo(tmp_path):
    summary = run_demo(load_config(DemoConfig, None, TINY_PIPELINE + ["rounds=2"]), tmp_path)
    data = tmp_path / "data"
    lines = lambda name: len((data / name).read_text().splitlines())  # noqa: E731
    assert lines("rankings-train-all-round2.jsonl") == lines("rankings-train.jsonl") + lines("rankings-train-round2.jsonl")
    cfg = (tmp_path / "sample-train-round2" / "config.yaml").read_text()
    assert str(tmp_path / "ppo" / "model") in cfg  # round 2 samples from the round-1 PPO policy
    candidates = [json.loads(line) for line in (data / "candidates-train-round2.jsonl").read_text().splitlines()]
    assert {c["provenance"]["model"] for record in candidates for c in record["candidates"]} == {"ppo-round1-T0.7", "ppo-round1-T1.0"}
    ppo2 = yaml.safe_load((tmp_path / "ppo-round2" / "config.yaml").read_text())
    assert ppo2["policy"]["path"] == str(tmp_path / "ppo" / "model")
    assert ppo2["reward"]["rm_paths"] == [str(tmp_path / "rm-round2" / "model")]
    assert ppo2["kl"]["reference_path"] == str(tmp_path / "sft" / "model")  # KL still to SFT, not round 1's PPO
    assert yaml.safe_load((tmp_path / "ppo" / "config.yaml").read_text())["kl"]["reference_path"] is None  # = policy
    first_step = next(row for row in read_metrics(tmp_path / "ppo-round2") if "kl/ref" in row)
    assert first_step["kl/ref"] > 0.01  # the policy starts away from it
    assert summary["rounds"] == 2 and summary["runs"]["ppo"].endswith("ppo-round2")
    assert (tmp_path / "report.html").exists()
