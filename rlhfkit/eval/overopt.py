"""Reward over-optimisation: proxy and gold score against d = √KL for RL (PPO checkpoints) and
best-of-n, with Gao, Schulman & Hilton's (2022) functional forms fitted to the gold curve:

    best-of-n:  R(d) = d(α − β d)          RL:  R(d) = d(α − β log d)

Scores are centred on the initial policy first (R(0) := 0, Gao §2.2). The study takes points, not
models: a PPO run directory (its `metrics.jsonl` logs `kl/ref`, `reward/rm`, `reward/gold` for each
rollout batch), an eval summary of several checkpoints, or explicit (KL, proxy, gold) triples.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from rlhfkit.eval.stats import GaoFit, fit_bon, fit_rl

GRID_POINTS = 100
"""Points of each fitted curve in the plot data."""


@dataclass(frozen=True)
class OverOptPoint:
    """One evaluated policy: KL to the initial policy and its mean proxy and gold scores."""

    kl: float
    """KL(π ‖ π_init), nats (sequence sum, mean over prompts)."""
    proxy: float
    """Mean proxy (reward-model) score."""
    gold: float
    """Mean gold score."""
    label: str = ""
    """Where the point comes from (`step 200`, `bon n=16`, a model name)."""

    @property
    def d(self) -> float:
        """√KL; a slightly negative KL estimate (sampling noise) counts as 0."""
        return math.sqrt(max(self.kl, 0.0))


def points_from_metrics(run_dir: str | Path, kl_key: str = "kl/ref", proxy_key: str = "reward/rm",
                        gold_key: str = "reward/gold") -> list[OverOptPoint]:
    """One point per `metrics.jsonl` row of a PPO run that logged all three keys."""
    from rlhfkit.rundir import read_metrics

    rows = read_metrics(run_dir)
    points = [OverOptPoint(float(r[kl_key]), float(r[proxy_key]), float(r[gold_key]), f"step {r['step']}")
              for r in rows if all(isinstance(r.get(k), (int, float)) for k in (kl_key, proxy_key, gold_key))]
    if not points:
        raise ValueError(f"{run_dir}/metrics.jsonl has no rows with {kl_key}, {proxy_key} and {gold_key}")
    return points


def points_from_eval(summary: dict | str | Path, decoding: str = "T=1", models: Sequence[str] | None = None,
                     head: int = 0) -> list[OverOptPoint]:
    """One point per model of an `evaluate_models` summary (or its run directory): sampled-decoding
    KL to the reference, RM head `head` and gold. The reference should be the initial policy."""
    if not isinstance(summary, dict):
        summary = json.loads((Path(summary) / "summary.json").read_text())
    table = summary["decodings"][decoding]["models"]
    names = list(models) if models is not None else list(table)
    missing = [n for n in names if not all(k in table.get(n, {}) for k in ("kl", "rm", "gold"))]
    if missing:
        raise ValueError(f"models {missing} lack kl, rm or gold in decoding {decoding!r} (needs a sampled "
                         "decoding, a reward model and task prompts)")
    return [OverOptPoint(table[n]["kl"], table[n]["rm"][head], table[n]["gold"], n) for n in names]


def _as_points(source: Any, kind: str) -> list[OverOptPoint]:
    """Points from a run directory / JSON file path, a best-of-n study dict, or a list of points,
    `BonPoint`s, dicts with kl/proxy/gold, or (kl, proxy, gold) tuples."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return points_from_metrics(path) if (path / "metrics.jsonl").exists() else points_from_eval(path)
        source = json.loads(path.read_text())
    if isinstance(source, dict):
        source = source["points"]
    out = []
    for item in source:
        if isinstance(item, OverOptPoint):
            out.append(item)
        elif isinstance(item, dict):
            label = item.get("label") or (f"bon n={item['n']}" if "n" in item else "")
            out.append(OverOptPoint(float(item["kl"]), float(item["proxy"]), float(item["gold"]), label))
        elif hasattr(item, "kl"):
            out.append(OverOptPoint(item.kl, item.proxy, item.gold, f"{kind} n={getattr(item, 'n', '')}"))
        else:
            kl, proxy, gold = item
            out.append(OverOptPoint(float(kl), float(proxy), float(gold)))
    return out


def analyse_curve(points: Sequence[OverOptPoint], form: str, init: tuple[float, float] | None = None) -> dict:
    """Centre, fit and summarise one optimiser's curve.

    `init` = (proxy, gold) of the initial policy; default: the scores of the point with the
    smallest KL (the n = 1 best-of-n point, or the first PPO rollout). Both Gao forms are fitted to
    the centred gold scores so their R² can be compared; `form` names the one the optimiser follows.
    """
    pts = sorted(points, key=lambda p: p.kl)
    if len(pts) < 3:
        raise ValueError(f"need ≥ 3 points to fit a curve, got {len(pts)}")
    init = init if init is not None else (pts[0].proxy, pts[0].gold)
    d = np.array([p.d for p in pts])
    proxy = np.array([p.proxy for p in pts]) - init[0]
    gold = np.array([p.gold for p in pts]) - init[1]
    fits: dict[str, GaoFit] = {"bon": fit_bon(d, gold), "rl": fit_rl(d, gold)}
    grid = np.linspace(0.0, float(d.max()), GRID_POINTS)
    best = int(np.argmax(gold))
    return {
        "form": form,
        "init": {"proxy": init[0], "gold": init[1]},
        "points": [{"label": p.label, "kl": p.kl, "d": float(di), "proxy": float(pr), "gold": float(g)}
                   for p, di, pr, g in zip(pts, d, proxy, gold)],
        "fits": {name: fit.to_dict() for name, fit in fits.items()},
        "fit": fits[form].to_dict(),
        "curve": {"d": grid.tolist(), "gold_fit": fits[form].predict(grid).tolist()},
        "gold_peak": {"label": pts[best].label, "kl": pts[best].kl, "gold": float(gold[best]),
                      "is_interior": best < len(pts) - 1},
        "proxy_trend": float(stats.spearmanr(d, proxy).statistic) if np.ptp(proxy) > 0 else 0.0,
        "final_gap": float(proxy[-1] - gold[-1]),
    }


def overoptimisation_study(rl: Any = None, bon: Any = None, *, rl_init: tuple[float, float] | None = None,
                           bon_init: tuple[float, float] | None = None,
                           out_path: str | Path | None = None) -> dict:
    """Gao et al.'s over-optimisation analysis of a long low-β PPO run and/or a best-of-n curve.

    `rl`: a PPO run directory (points from its metrics.jsonl), an eval run directory or summary of
    its checkpoints (`points_from_eval`), or a list of points / (kl, proxy, gold) triples.
    `bon`: a `best_of_n_study` result, its JSON path, or a list of `BonPoint`s / points.
    Returns {"rl": analysis, "bon": analysis} (see `analyse_curve`; a missing input is None),
    the plot data of `rlhfkit.eval.report`'s proxy-vs-gold section; optionally written as JSON.
    """
    if rl is None and bon is None:
        raise ValueError("overoptimisation_study needs rl points, bon points, or both")
    study = {"rl": analyse_curve(_as_points(rl, "rl"), "rl", rl_init) if rl is not None else None,
             "bon": analyse_curve(_as_points(bon, "bon"), "bon", bon_init) if bon is not None else None}
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(study, indent=2) + "\n")
    return study

