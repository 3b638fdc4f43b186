"""Atomic, resumable checkpoints in a run directory's `checkpoints/` (see `rlhfkit.rundir`).

Every process takes part in checkpoint saving (Accelerate gathers what it needs and stores each
process's RNG state); only the main process renames and prunes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rlhfkit.rundir import RunDir

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (temp dirs of an interrupted save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).exists()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def save_checkpoint(accelerator, run_dir: RunDir, step: int, trainer_state: dict[str, Any], keep: int) -> Path:
    """Save every registered object (models, optimisers, schedulers, RNG of each process) plus our
    trainer state, atomically: into `.tmp-step-N`, then renamed once complete."""
    final = run_dir.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = run_dir.checkpoints / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        older = sorted(p for p in run_dir.checkpoints.iterdir() if p.name.startswith(CHECKPOINT_PREFIX))
        for stale in older[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore every registered object and RNG state; return our trainer state."""
    accelerator.load_state(str(path))
    return json.loads((path / TRAINER_STATE).read_text())


def checkpoint_to_resume(run: RunDir, resume: bool) -> Path | None:
    """The checkpoint a run continues from: the newest in its directory when `resume`, else None.

    A fresh start (`resume` false) in a directory that holds checkpoints is refused: the new run's
    checkpoints would be pruned by step number among the old ones, and a later resume could load
    the old run's. A fresh start drops the metrics and samples an earlier start left behind."""
    latest = latest_checkpoint(run.path)
    if latest is not None and resume:
        return latest
    if latest is not None:
        raise ValueError(f"{run.path} holds checkpoints of an earlier run ({latest.name}) and run.resume=false: "
                         "choose another run.out_dir, or delete that one")
    run.clear_logs()
    return None

