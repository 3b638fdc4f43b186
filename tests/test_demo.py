"""A reduced `rlhfkit demo`: every headline figure moves the right way against the gold judge."""

import json

import pytest

from rlhfkit.config.base import load_config
from rlhfkit.config.demo import DemoConfig
from rlhfkit.demo import run_demo

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
    assert summary["gold_reward_ppo"] > summary["gold_reward_sft"], summary
    assert summary["gold_win_rate_vs_sft"] > 0.55, summary
    assert 0 < summary["kl_to_ref"] < 6, summary
    assert 0.55 < summary["rm_accuracy"] <= 1.0 and summary["rm_accuracy"] > 0.75 * summary["rm_bayes_ceiling"], summary
    assert (tmp_path / "report.html").stat().st_size > 10_000
