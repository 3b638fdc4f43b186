"""Health checks of a PPO run (rlhf-details §1(e)): warnings when the KL goes negative, the ratio
explodes, the entropy collapses, the response length drifts or the first ratio is not 1, plus the
distinct-n diversity metric."""

from __future__ import annotations

import logging
from typing import Sequence

NEGATIVE_KL_NATS = -0.1
"""Sequence KL below this is not estimator noise: top-k / min-length sampling or EOS suppression
lets the policy earn "free" reward (TRL FAQ)."""
RATIO_LIMIT = 10.0
"""Largest π/π_old before updates count as too drastic (legacy TRL `ratio_threshold`)."""
ENTROPY_COLLAPSE_FRACTION = 0.5
"""Warn when per-token entropy falls below this share of the first step's (healthy: ≈ −20%)."""
LENGTH_DRIFT_FACTOR = 1.5
"""Warn when the mean response length leaves [first / factor, first · factor]."""
FIRST_RATIO_TOL = {"fp32": 1e-5, "bf16": 0.1}
"""Allowed max |ρ − 1| before the first update (c17: fp32 std 6.6e-6; bf16 ≈ 0.05)."""


def distinct_n(rows: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over a batch of token sequences (0 when there are none);
    falls towards 0 as outputs repeat across prompts (degenerate text, entropy collapse)."""
    grams = [tuple(row[i : i + n]) for row in rows for i in range(len(row) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class Watchdog:
    """Compares each step's metrics with the first step's and logs a warning when a condition
    becomes true (once per episode of the condition, not every step). `state` is a dict kept in
    the checkpoint, so a resumed run keeps its baselines."""

    def __init__(self, state: dict, logger: logging.Logger):
        self.state = state
        self.logger = logger
        state.setdefault("active", [])

    def _flag(self, name: str, condition: bool, message: str) -> None:
        active = self.state["active"]
        if condition and name not in active:
            active.append(name)
            self.logger.warning(message)
        elif not condition and name in active:
            active.remove(name)

    def check(self, m: dict[str, float], fp32: bool) -> None:
        base = self.state.setdefault("baseline", {k: m[k] for k in ("policy/entropy", "response/length") if k in m})
        self._flag("kl_negative", m["kl/ref"] < NEGATIVE_KL_NATS,
                   f"KL to the reference is negative ({m['kl/ref']:.3g} nats): check top_k/top_p/min-length sampling")
        ratio = m.get("ppo/ratio_max", 1.0)
        self._flag("ratio", ratio > RATIO_LIMIT, f"PPO ratio max {ratio:.3g} > {RATIO_LIMIT:g}: updates are too "
                                                 "drastic (lower the LR, raise minibatches)")
        if "policy/entropy" in m and base.get("policy/entropy"):
            h, h0 = m["policy/entropy"], base["policy/entropy"]
            self._flag("entropy", h < ENTROPY_COLLAPSE_FRACTION * h0,
                       f"entropy collapsed to {h:.3g} nats/token from {h0:.3g} at the start")
        if base.get("response/length"):
            n, n0 = m["response/length"], base["response/length"]
            self._flag("length", not n0 / LENGTH_DRIFT_FACTOR <= n <= n0 * LENGTH_DRIFT_FACTOR,
                       f"mean response length drifted to {n:.3g} tokens from {n0:.3g} at the start")
        if "ppo/first_ratio_dev" in m:
            tol = FIRST_RATIO_TOL["fp32" if fp32 else "bf16"]
            dev = m["ppo/first_ratio_dev"]
            self._flag("first_ratio", dev > tol, f"first-minibatch ratio deviates from 1 by {dev:.3g} (> {tol:g}): "
                                                 "rollout and training log-probs disagree (padding, position ids, "
                                                 "temperature or dtype)")
