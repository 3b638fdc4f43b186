"""The run-directory contract shared by every stage.

```
RUN/config.yaml        effective config (after overrides) + derived values
RUN/metrics.jsonl      one JSON object per logged step, keys `section/name`
RUN/tb/                TensorBoard event files
RUN/summary.json       final figures of the run
RUN/checkpoints/       step-<8-digit step>/ resumable states (atomic: written to a temp dir, renamed)
RUN/model/             the final model, a standard Hugging Face directory (safetensors)
RUN/samples.jsonl      sample generations logged during the run
```
Only the main process writes files; every process takes part in checkpoint saving (Accelerate
gathers what it needs and stores each process's RNG state).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from rlhfkit.models.text import plain_prompt_text

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so a crash leaves either the old or the new content, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json_default(value: Any) -> Any:
    """JSON for pydantic records inside logged samples (chat prompts are `Message` lists)."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class RunDir:
    """Writes the files of one run directory; a no-op on non-main processes."""

    def __init__(self, path: str | Path, is_main: bool = True, tensorboard: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self._tb = None
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.path / "tb"))

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def save_config(self, config: dict[str, Any], derived: dict[str, Any]) -> None:
        if self.is_main:
            text = yaml.safe_dump({**config, "derived": derived}, sort_keys=False)
            atomic_write_text(self.path / "config.yaml", text)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one `{"step": step, "section/name": value, …}` line and the TensorBoard scalars."""
        if not self.is_main:
            return
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if not self.is_main or not samples:
            return
        with open(self.path / "samples.jsonl", "a") as fh:
            for sample in samples:
                fh.write(json.dumps({"step": step, **sample}, default=_json_default) + "\n")
        if self._tb is not None:
            text = "\n\n".join(f"**{plain_prompt_text(s.get('prompt', ''))}** → {s.get('response', '')}" for s in samples)
            self._tb.add_text("samples", text, step)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_main:
            clean = {k: _jsonable(v) for k, v in summary.items()}
            atomic_write_text(self.path / "summary.json", json.dumps(clean, indent=2) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop metric rows logged after the checkpoint so the file has no duplicates."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.path / name
            if not self.is_main or not path.exists():
                continue
            rows = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line).get("step", 0) <= after_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StageTimer:
    """Named, timed stages: `with timer("rollout"): …` adds `time/rollout` seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{name}"] = self.seconds.get(f"time/{name}", 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out
