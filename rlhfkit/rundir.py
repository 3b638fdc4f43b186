"""The run-directory contract shared by every stage (sampling, training, evaluation).

```
RUN/config.yaml        effective config (after overrides) + derived values
RUN/metrics.jsonl      one JSON object per logged step, keys `section/name`
RUN/tb/                TensorBoard event files
RUN/summary.json       final figures of the run
RUN/checkpoints/       step-<8-digit step>/ resumable states (rlhfkit.train.run)
RUN/model/             the final model, a standard Hugging Face directory (safetensors)
RUN/samples.jsonl      sample generations logged during the run
```
Only the main process writes files. This module sits below the stages (`rollout`, `train`, `eval`)
so each can keep a run directory without importing another stage.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from rlhfkit.models.text import plain_prompt_text


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

    def clear_logs(self) -> None:
        """On a fresh start, drop the metric rows and samples of an earlier start in this directory."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            if self.is_main:
                (self.path / name).unlink(missing_ok=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


class Progress:
    """A rich progress bar with live metric fields; silent when disabled or not the main process."""

    def __init__(self, total: int, description: str, enabled: bool, completed: int = 0):
        self._bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            # On stderr, so that stdout stays clean for results (`rlhfkit eval cfg > summary.json`).
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(description, total=total, completed=completed, info="")

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def update(self, advance: int = 1, **info: float | str) -> None:
        if self._bar is not None:
            text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
            self._bar.update(self._task, advance=advance, info=text)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def print_effective_config(title: str, config: dict, derived: dict, is_main: bool) -> None:
    """Print the effective config and derived values at the start of a run."""
    if not is_main:
        return
    from rich.console import Console
    from rich.panel import Panel

    text = yaml.safe_dump(config, sort_keys=False) + "# derived\n" + yaml.safe_dump(derived, sort_keys=False)
    Console(stderr=True).print(Panel(text.rstrip(), title=title, expand=False))
