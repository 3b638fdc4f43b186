"""The best-of-n curve: proxy and gold score of best-of-n sampling for n = 1, 2, 4, …, N against
d = √KL, the training-free comparison curve of Gao, Schulman & Hilton (2022, §2).

KL is the analytic log n − (n−1)/n (`rlhfkit.algos.bon.best_of_n_kl`); the scores are the unbiased
estimates from N ≥ n samples per prompt (`best_of_n_unbiased`, Nakano et al. 2021), so one set of
N samples gives every point of the curve.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rlhfkit.algos.bon import best_of_n_kl, best_of_n_unbiased


@dataclass(frozen=True)
class BonPoint:
    """One point of the best-of-n curve (scores averaged over prompts)."""

    n: int
    """Samples the best is chosen from."""
    kl: float
    """KL(best-of-n ‖ base) = log n − (n−1)/n, nats."""
    proxy: float
    """Expected proxy (reward-model) score of the proxy-best of n."""
    gold: float
    """Expected gold score of the proxy-best of n."""

    @property
    def d(self) -> float:
        """√KL, Gao's distance."""
        return math.sqrt(self.kl)

    def to_dict(self) -> dict:
        return {**asdict(self), "d": self.d}


def bon_ns(n_max: int) -> list[int]:
    """1, 2, 4, … up to n_max, with n_max itself appended when it is not a power of two."""
    if n_max < 1:
        raise ValueError(f"n_max must be ≥ 1, got {n_max}")
    ns = [2**k for k in range(int(math.log2(n_max)) + 1)]
    return ns if ns[-1] == n_max else ns + [n_max]


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int] | None = None) -> list[BonPoint]:
    """The best-of-n curve from N samples per prompt.

    `proxy`, `gold`: (P, N) scores of N samples for each of P prompts. For each n (default
    `bon_ns(N)`): proxy = mean over prompts of E[max proxy of n], gold = mean over prompts of
    E[gold of the proxy-best of n], both by the unbiased subset average.
    """
    proxy_t = torch.as_tensor(np.asarray(proxy, dtype=float))
    gold_t = torch.as_tensor(np.asarray(gold, dtype=float))
    if proxy_t.ndim != 2 or proxy_t.shape != gold_t.shape:
        raise ValueError(f"proxy and gold must both be (prompts, samples); got {tuple(proxy_t.shape)} and "
                         f"{tuple(gold_t.shape)}")
    ns = list(ns) if ns is not None else bon_ns(proxy_t.shape[1])
    return [BonPoint(n, best_of_n_kl(n), float(best_of_n_unbiased(proxy_t, proxy_t, n).mean()),
                     float(best_of_n_unbiased(proxy_t, gold_t, n).mean())) for n in ns]


def sample_bon_scores(model, tokenizer, prompts: Sequence, n_samples: int, rm, task, *, temperature: float,
                      max_new_tokens: int, batch_size: int = 64, head: int | None = None,
                      on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(proxy, gold), each (P, n_samples): the RM score (head `head`, or the mean over heads) and the
    task's gold reward of n_samples responses per prompt sampled at `temperature`; `on_batch(k)` is
    called after each batch of k samples (progress)."""
    from rlhfkit.config.eval import DecodingSpec
    from rlhfkit.eval.evaluate import generate_responses
    from rlhfkit.models.text import plain_prompt_text

    repeated = [p for p in prompts for _ in range(n_samples)]
    resp = generate_responses(model, tokenizer, repeated, DecodingSpec(temperature=temperature), max_new_tokens,
                              batch_size, on_batch=on_batch)
    scores = rm.score_texts(repeated, resp.texts, resp.finished)
    proxy = scores.mean(1) if head is None else scores[:, head]
    gold = task.gold_rewards([plain_prompt_text(p) for p in repeated], resp.texts, resp.finished)
    shape = (len(prompts), n_samples)
    return proxy.numpy().astype(float).reshape(shape), np.asarray(gold, dtype=float).reshape(shape)


def best_of_n_study(model_dir: str | Path, reward_model_dir: str | Path, *, task: str = "reviews",
                    task_seed: int = 0, split: str = "test", n_prompts: int = 64, n_max: int = 64,
                    n_samples: int | None = None, temperature: float = 1.0, max_new_tokens: int = 48,
                    head: int | None = None, seed: int = 0, out_path: str | Path | None = None,
                    progress: bool = True) -> dict:
    """Sample, score and tabulate the best-of-n curve of a base model (e.g. `runs/sft`) under a
    proxy RM, with gold scores from the built-in task; optionally write it as JSON. `progress`
    shows a bar over the samples drawn.

    Returns {"points": [BonPoint.to_dict()…], "n_prompts", "n_samples", "temperature", "model",
    "reward_model"}; `overoptimisation_study(bon=…)` accepts the dict, its points or the JSON path.
    """
    from rlhfkit.eval.evaluate import resolve_model_dir
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.rundir import Progress
    from rlhfkit.tasks import get_task

    n_samples = n_samples or n_max
    if n_samples < n_max:
        raise ValueError(f"n_samples={n_samples} must be ≥ n_max={n_max} (the estimator needs N ≥ n)")
    path = resolve_model_dir(model_dir)
    model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)
    rm = load_reward_model(resolve_model_dir(reward_model_dir))
    gold_task = get_task(task, seed=task_seed)
    prompts = [r.prompt for r in gold_task.prompts(split, n_prompts)]
    torch.manual_seed(seed)
    with Progress(len(prompts) * n_samples, "best-of-n", progress) as bar:
        proxy, gold = sample_bon_scores(model, tokenizer, prompts, n_samples, rm, gold_task, temperature=temperature,
                                        max_new_tokens=max_new_tokens, head=head, on_batch=bar.update)
    result = {"points": [p.to_dict() for p in best_of_n_curve(proxy, gold, bon_ns(n_max))],
              "n_prompts": len(prompts), "n_samples": n_samples, "temperature": temperature,
              "model": str(path), "reward_model": str(reward_model_dir)}
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
    return result
