"""`rlhfkit demo`: the seed pipeline on the built-in task, each stage in its own run directory."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config.demo import DemoConfig
from rlhfkit.train.run import atomic_write_text


def _with(cfg, **changes):
    """A copy of a frozen config section with some fields replaced (validated)."""
    return type(cfg).model_validate({**cfg.model_dump(), **changes})


def run_demo(cfg: DemoConfig, out: str | Path) -> dict:
    from rlhfkit.train.sft import train_sft

    out = Path(out)
    sft_cfg = _with(cfg.sft, run=_with(cfg.sft.run, out_dir=str(out / "sft"), seed=cfg.seed),
                    data=_with(cfg.sft.data, task_seed=cfg.seed))
    sft = train_sft(sft_cfg)
    summary = {
        "gold_reward_untrained": sft["gold_reward_before"],
        "gold_reward_sft": sft["gold_reward_after"],
        "sft_eval_loss": sft["eval_loss"],
        "sft_unigram_loss": sft["unigram_loss"],
        "runs": {"sft": str(out / "sft")},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
