"""Reward-model training on preference groups, on Accelerate.

`train_rm(config)` is the Python API; `rlhfkit rm CONFIG key=value …` calls it. The unit of data
is a *group*: one prompt with K ≥ 2 responses and their ranks (a pair is a group of 2). All
C(K,2) pairs of a prompt stay in one batch element and one forward pass scores all K responses,
so each response is seen once per epoch and the loss is the mean over the prompt's pairs
(InstructGPT §3.5; rlhf-details a2). The optimiser-step loss is the mean over the *global*
batch's groups, whatever the split into processes and micro-batches.

With `loss.lm_coef > 0` the same forward also scores the top-ranked response's tokens with the
causal LM's head, and lm_coef · its mean token NLL is added to the loss (Secrets of RLHF;
rlhf-details b4).

Batches are length-grouped (prompts of similar token length together, batch order random), so
little compute goes to padding. After training the reward is normalised to mean 0 / std 1 on
reference responses (rlhf-details b7) and saved as an RM directory (`rlhfkit.models.reward`).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import defaultdict
from contextlib import nullcontext

import torch

from rlhfkit.config.base import config_to_dict
from rlhfkit.config.rm import RMConfig
from rlhfkit.models.reward import RewardModel, build_reward_model, load_reward_model, shares_prompt
from rlhfkit.rundir import Progress, RunDir, StageTimer, atomic_write_text, print_effective_config, seed_everything
from rlhfkit.train.common import (BatchPlan, build_optimizer, build_scheduler, epoch_permutation, global_batch_indices,
                                  make_accelerator)
from rlhfkit.train.rm_data import Group, load_rm_data, sample_candidates
from rlhfkit.train.run import checkpoint_to_resume, load_checkpoint, save_checkpoint

GOLD_GAP_EDGES = (0.25, 0.5, 1.0)
"""|gold_a − gold_b| bucket edges for accuracy by difficulty when labels came from the task."""


# ---------------------------------------------------------------------------------------- batches
class LengthGroupedBatches:
    """Global batch `step` of a length-grouped epoch, a pure function of (seed, step) like
    `global_batch_indices`: the epoch's permutation (incomplete last batch dropped) is cut into
    windows of `window` batches, each sorted by length (longest first) and cut into batches; the
    order of the batches is then permuted. Exact resume needs only the step counter."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.per_epoch = len(lengths) // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{len(lengths)} groups are fewer than one batch of {batch_size}")
        self._epoch, self._batches = -1, []

    def __call__(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            perm = epoch_permutation(len(self.lengths), self.seed, epoch)[: self.per_epoch * self.batch_size]
            size = self.window * self.batch_size
            batches = []
            for start in range(0, len(perm), size):
                chunk = sorted(perm[start : start + size], key=lambda i: -self.lengths[i])
                batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
            order = epoch_permutation(self.per_epoch, self.seed + 1, epoch)
            self._epoch, self._batches = epoch, [batches[i] for i in order]
        return self._batches[k]


def forward_width(group: Group, model: RewardModel) -> int:
    """Tokens of the group's forward row(s): one shared-prompt row, or its longest sequence."""
    if model.can_share_prompt and shares_prompt(group.inputs):
        p = group.inputs[0].prompt_len
        return p + sum(len(x.ids) - p for x in group.inputs)
    return group.length


def group_batch(groups: list[Group], model: RewardModel, lm: bool = False) -> tuple[dict, dict]:
    """One forward's inputs (`RewardModel.collate_groups`: a shared-prompt row per group, or a
    row per response) and the group layout: `index` (B, K) output row of each response, `ranks`,
    `response_mask` (True = real), `margins` (B, K, K) or None, and token counts. With `lm` the
    inputs also carry the LM-loss positions of each group's chosen response (the first of its
    best-ranked ones) and the layout their `lm_mask` (B, L), True = a real target token."""
    width = max(len(g.ranks) for g in groups)
    index = torch.zeros(len(groups), width, dtype=torch.long)
    ranks = torch.full((len(groups), width), width + 1, dtype=torch.long)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    margins = torch.zeros(len(groups), width, width) if any(g.margins for g in groups) else None
    row = 0
    for b, g in enumerate(groups):
        k = len(g.ranks)
        index[b, :k] = torch.arange(row, row + k)
        ranks[b, :k], mask[b, :k] = torch.tensor(g.ranks), True
        if margins is not None and g.margins:
            margins[b, :k, :k] = torch.tensor(g.margins)
        row += k
    chosen = [g.ranks.index(min(g.ranks)) for g in groups] if lm else None
    batch = model.collate_groups([g.inputs for g in groups], chosen)
    token_mask = batch.pop("token_mask")
    counts = {"tokens": sum(len(x.ids) for g in groups for x in g.inputs), "forward_tokens": int(token_mask.sum()),
              "padded_tokens": token_mask.numel()}
    return batch, {"index": index, "ranks": ranks, "response_mask": mask, "margins": margins,
                   "lm_mask": batch.pop("lm_mask", None), **counts}


def group_loss(rewards: torch.Tensor, layout: dict, loss_type: str, centering_coef: float) -> torch.Tensor:
    """Mean over groups (and heads) of the grouped BT loss (/C(K,2)) or the PL loss, plus the
    centering term over all strict pairs. `rewards` (N, H): one row per response of the forward."""
    from rlhfkit.algos.rm_losses import centering_loss, grouped_pairwise_loss, plackett_luce_loss

    grouped = rewards[layout["index"]]  # (B, K, H); padded slots are masked by the losses
    ranks, mask = layout["ranks"].to(rewards.device), layout["response_mask"].to(rewards.device)
    total = rewards.new_zeros(())
    for h in range(rewards.shape[1]):
        r = grouped[..., h]
        if loss_type == "pl":
            total = total + plackett_luce_loss(r, ranks, mask).mean()
        else:
            margins = layout["margins"]
            total = total + grouped_pairwise_loss(r, ranks, mask, None if margins is None else
                                                  margins.to(rewards.device)).mean()
        if centering_coef:
            beats = (ranks.unsqueeze(-1) < ranks.unsqueeze(-2)) & mask.unsqueeze(-1) & mask.unsqueeze(-2)
            b, i, j = beats.nonzero(as_tuple=True)
            total = total + centering_loss(r[b, i], r[b, j], centering_coef)
    return total / rewards.shape[1]


def rm_step(model, optimizer, scheduler, accelerator, groups: list[Group], indices: list[int], plan: BatchPlan,
            cfg: RMConfig, rm: RewardModel) -> dict:
    """One optimiser step over the global batch `indices`; returns the preference `loss` and, with
    `loss.lm_coef > 0`, the chosen responses' mean token NLL `lm_loss` (each a mean over the global
    batch's groups: this process's share scaled, summed across processes) and global counts:
    `real_tokens` (the prompt+response tokens of every response, what a pairwise trainer would
    run), `forward_tokens` (the real tokens actually run: a shared prompt counts once),
    `padded_tokens` and `pairs`."""
    from rlhfkit.algos.rm_losses import chosen_lm_loss

    lm = cfg.loss.lm_coef > 0
    micro_batches = plan.micro_batches(indices, accelerator.process_index)
    total = torch.zeros(2, device=accelerator.device)  # preference loss, LM loss
    tokens = forward = padded = pairs = 0
    for k, micro in enumerate(micro_batches):
        chunk = [groups[i] for i in micro]
        batch, layout = group_batch(chunk, rm, lm)
        batch = {name: t.to(accelerator.device) for name, t in batch.items()}
        layout["index"] = layout["index"].to(accelerator.device)
        # DDP averages gradients over processes, so each scales by num_processes / global groups.
        scale = len(micro) * plan.num_processes / cfg.batch_size
        sync = k == len(micro_batches) - 1
        with accelerator.autocast(), (nullcontext() if sync else accelerator.no_sync(model)):
            rewards, logprobs = model(**batch) if lm else (model(**batch), None)
            loss = group_loss(rewards.float(), layout, cfg.loss.type, cfg.loss.centering_coef)
            nll = (chosen_lm_loss(logprobs, layout["lm_mask"].to(accelerator.device)).mean() if lm
                   else torch.zeros_like(loss))
            accelerator.backward((loss + cfg.loss.lm_coef * nll) * scale)
        total += torch.stack([loss, nll]).detach() * scale / plan.num_processes
        tokens, forward, padded = tokens + layout["tokens"], forward + layout["forward_tokens"], padded + layout[
            "padded_tokens"]
        pairs += sum(len(g.pairs()) for g in chunk)
    if cfg.optim.max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    counts = torch.tensor([tokens, forward, padded, pairs], dtype=torch.float64, device=accelerator.device)
    counts = accelerator.reduce(counts, reduction="sum").tolist()
    losses = accelerator.reduce(total, reduction="sum").tolist()
    return {"loss": losses[0], **({"lm_loss": losses[1]} if lm else {}), "real_tokens": counts[0],
            "forward_tokens": counts[1], "padded_tokens": counts[2], "pairs": counts[3]}


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def score_groups(model: RewardModel, groups: list[Group], batch_size: int, autocast) -> list[torch.Tensor]:
    """Raw rewards of every response, one (K, H) tensor per group; forwards over length-sorted
    sequences."""
    flat = [(g, i) for g in range(len(groups)) for i in range(len(groups[g].inputs))]
    order = sorted(range(len(flat)), key=lambda n: len(groups[flat[n][0]].inputs[flat[n][1]].ids))
    scores = torch.empty(len(flat), model.num_heads)
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = model.collate([groups[flat[n][0]].inputs[flat[n][1]] for n in chunk])
        with autocast():
            scores[chunk] = model(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
    model.train(was_training)
    out, row = [], 0
    for g in groups:
        out.append(scores[row : row + len(g.inputs)])
        row += len(g.inputs)
    return out


def _gold_bucket(gap: float) -> str:
    """The `GOLD_GAP_EDGES` interval holding |gold_a − gold_b|, e.g. "gold_gap[0.5,1)"."""
    lo = max(e for e in (0.0,) + GOLD_GAP_EDGES if e <= gap)
    hi = min((e for e in GOLD_GAP_EDGES if e > gap), default=math.inf)
    return f"gold_gap[{lo:g},{hi:g})"


def _finite(x) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def evaluate_rm(model: RewardModel, groups: list[Group], cfg: RMConfig, autocast, tau: float | None) -> dict:
    """Held-out figures over every strict pair of every group (multi-head models: on the mean
    over heads): `eval/loss` mean −log σ(r_better − r_worse) (no margin, so BT and PL runs
    compare), `eval/accuracy` (reward ties count ½) with its 95 % Wilson interval
    (`eval/accuracy_low`, `_high`), ECE and reliability table over both
    orientations of each pair, accuracy by strength/margin or gold-gap bucket, and with gold
    rewards the accuracy against the noiseless order and the Bayes ceiling of the labels."""
    from rlhfkit.algos.calibration import (expected_calibration_error, pairwise_accuracy,
                                           pairwise_accuracy_interval, reliability_table)
    from rlhfkit.tasks import bayes_ceiling

    scores = [s.mean(1) for s in score_groups(model, groups, cfg.eval.batch_size, autocast)]
    diffs, buckets, gold_better, gold_worse = [], [], [], []
    for g, s in zip(groups, scores):
        for i, j in g.pairs():
            diffs.append(float(s[i] - s[j]))
            if g.gold is not None:
                gold_better.append(g.gold[i])
                gold_worse.append(g.gold[j])
            buckets.append(g.bucket or (_gold_bucket(abs(g.gold[i] - g.gold[j])) if g.gold else "all"))
    diff = torch.tensor(diffs, dtype=torch.float64)
    zeros = torch.zeros_like(diff)
    # Both orientations of every pair: p = σ(Δ) for "better wins" (outcome 1) and σ(−Δ) for the
    # reverse (outcome 0), so the whole [0, 1] range of the diagram is tested without a coin flip.
    probs, outcomes = torch.cat([torch.sigmoid(diff), torch.sigmoid(-diff)]), torch.cat([zeros + 1, zeros])
    table = reliability_table(probs, outcomes, cfg.eval.n_bins)
    by_bucket = defaultdict(list)
    for n, b in enumerate(buckets):
        by_bucket[b].append(n)
    accuracy_low, accuracy_high = pairwise_accuracy_interval(diff, zeros)
    out = {"eval/loss": float(torch.nn.functional.softplus(-diff).mean()),
           "eval/accuracy": pairwise_accuracy(diff, zeros), "eval/pairs": len(diffs),
           "eval/accuracy_low": accuracy_low, "eval/accuracy_high": accuracy_high,
           "eval/ece": expected_calibration_error(probs, outcomes, cfg.eval.n_bins),
           "reliability_table": [
               {"bin": [float(lo), float(hi)], "confidence": _finite(c), "accuracy": _finite(a), "count": int(n)}
               for lo, hi, c, a, n in zip(table.bin_edges[:-1], table.bin_edges[1:], table.mean_confidence,
                                          table.accuracy, table.count)],
           "accuracy_by_bucket": {b: {"accuracy": pairwise_accuracy(diff[idx], zeros[idx]), "pairs": len(idx)}
                                  for b, idx in sorted(by_bucket.items())}}
    if gold_better and tau is not None:
        # Agreement with the noiseless (gold) order, which the noisy labels only approximate.
        gold_diff = torch.tensor(gold_better, dtype=torch.float64) - torch.tensor(gold_worse, dtype=torch.float64)
        untied = gold_diff != 0
        if bool(untied.any()):
            signed = torch.where(gold_diff > 0, diff, -diff)[untied]
            out["eval/gold_accuracy"] = pairwise_accuracy(signed, torch.zeros_like(signed))
        out["eval/bayes_ceiling"] = bayes_ceiling(gold_better, gold_worse, tau)
    return out


def normalization_samples(cfg: RMConfig, task, train: list[Group]) -> tuple[list, list, list]:
    """(prompts, responses, finished) the reward is normalised on: responses sampled from the
    policy dir, or reference responses — an SFT file, the task's SFT demonstrations, or else one
    response per training prompt (position n mod K of group n, so chosen and rejected alternate)."""
    norm = cfg.normalize
    if norm.source == "policy":
        prompts = ([p.prompt for p in task.prompts("train", norm.n_samples)] if task
                   else [g.prompt for g in train[: norm.n_samples]])
        cands = sample_candidates(norm.policy_path, prompts, 1, norm.temperature, norm.max_new_tokens, cfg.run.seed)
        kept = [(p, c[0]) for p, c in zip(prompts, cands) if c]
        return [p for p, _ in kept], [c[0] for _, c in kept], [c[1] for _, c in kept]
    if norm.reference_path or task:
        from rlhfkit.data import read_records

        demos = (read_records(norm.reference_path, kind="sft", limit=norm.n_samples)[0] if norm.reference_path
                 else task.sft_examples(norm.n_samples, split="train"))
        return [d.prompt for d in demos], [d.response for d in demos], [True] * len(demos)
    picks = [(g, n % len(g.texts)) for n, g in enumerate(train[: norm.n_samples])]
    return [g.prompt for g, _ in picks], [g.texts[i] for g, i in picks], [g.finished[i] for g, i in picks]


# ---------------------------------------------------------------------------------------- the loop
def _file_corpus(cfg: RMConfig):
    """Tokenizer text for a tiny RM trained on files: "prompt response" lines of the records."""
    def corpus(n_lines: int) -> list[str]:
        from rlhfkit.data import read_records
        from rlhfkit.models.text import plain_prompt_text

        records, _ = read_records(cfg.data.train_path, kind=cfg.data.kind, on_error="skip", limit=n_lines)
        texts = {"pair": lambda r: [r.chosen, r.rejected], "ranking": lambda r: r.responses,
                 "rating": lambda r: [r.response]}[cfg.data.kind]
        return [f"{plain_prompt_text(r.prompt)} {t}" for r in records for t in texts(r)][:n_lines]
    return corpus


def _improved(state: dict, value: float, cfg: RMConfig) -> bool:
    """Track the best held-out metric; True when `value` beats it by more than min_delta."""
    stop = cfg.eval.early_stopping
    sign = 1.0 if stop.metric == "eval/loss" else -1.0
    if state["best"] is None or sign * (state["best"] - value) > stop.min_delta:
        state["best"], state["bad_evals"] = value, 0
        return True
    state["bad_evals"] += 1
    return False


def _save_best(model: RewardModel, run: RunDir, step: int) -> None:
    """Write RUN/best atomically (temp dir, then swapped in)."""
    final, tmp, old = run.path / "best", run.path / ".best-tmp", run.path / ".best-old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    atomic_write_text(tmp / "step.txt", f"{step}\n")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "/" in k and isinstance(v, (int, float))}


def train_rm(cfg: RMConfig) -> dict:
    """Train a reward model end to end into `cfg.run.out_dir`; return the summary."""
    from rlhfkit.data import SkipReport

    accelerator = make_accelerator(cfg.run)
    seed_everything(cfg.run.seed)
    is_main = accelerator.is_main_process
    run = RunDir(cfg.run.out_dir, is_main=is_main)
    checkpoint = checkpoint_to_resume(run, cfg.run.resume)
    if checkpoint is None and is_main:  # a fresh start regenerates the task's labels for its own config
        shutil.rmtree(run.path / "data", ignore_errors=True)
    corpus = _file_corpus(cfg) if cfg.data.train_path else None
    if corpus is None:
        from rlhfkit.tasks import get_task

        corpus = get_task(cfg.data.task, seed=cfg.data.task_seed).corpus
    rm = build_reward_model(cfg.model, corpus, cfg.run.seed, lm_head=cfg.loss.lm_coef > 0)
    skips = SkipReport()
    train, held, task, tau = load_rm_data(cfg, rm, run, is_main, skips, accelerator.wait_for_everyone)

    plan = BatchPlan.make(cfg.batch_size, cfg.micro_batch_size, accelerator.num_processes)
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * (len(train) // cfg.batch_size)))
    lengths = [forward_width(g, rm) for g in train]
    batches = (LengthGroupedBatches(lengths, cfg.batch_size, cfg.run.seed, cfg.length_group_batches)
               if cfg.length_grouping else
               (lambda step: global_batch_indices(len(train), cfg.batch_size, cfg.run.seed, step)))
    derived = {"grad_accum_steps": plan.grad_accum_steps, "effective_batch_size": cfg.batch_size,
               "num_processes": plan.num_processes, "optimizer_steps": total_steps, "train_groups": len(train),
               "train_pairs": sum(len(g.pairs()) for g in train), "eval_groups": len(held),
               "num_heads": rm.num_heads, "input_format": rm.input_format, "max_length": rm.max_length,
               "skipped": dict(skips.counts),
               "trainable_params": sum(p.numel() for p in rm.parameters() if p.requires_grad)}
    run.save_config(config_to_dict(cfg), derived)
    print_effective_config("rm", config_to_dict(cfg), derived, is_main)

    optimizer = build_optimizer(rm.named_parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    model, optimizer, scheduler = accelerator.prepare(rm, optimizer, scheduler)
    state = {"step": 0, "train_seconds": 0.0, "real_tokens": 0.0, "forward_tokens": 0.0, "padded_tokens": 0.0,
             "pairs": 0.0,
             "best": None, "best_step": None, "bad_evals": 0, "stopped_early": False}
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        run.truncate_metrics(state["step"])

    model.train()
    timer, steps_this_run, stop = StageTimer(), 0, cfg.eval.early_stopping
    with Progress(total_steps, "rm", cfg.run.progress and is_main, state["step"]) as bar:
        while state["step"] < total_steps and not state["stopped_early"]:
            start = time.perf_counter()
            with timer("train"):
                stats = rm_step(model, optimizer, scheduler, accelerator, train, batches(state["step"]), plan, cfg,
                                accelerator.unwrap_model(model))
            state["train_seconds"] += time.perf_counter() - start
            for key in ("real_tokens", "forward_tokens", "padded_tokens", "pairs"):
                state[key] += stats[key]
            state["step"] += 1
            steps_this_run += 1
            step = state["step"]
            metrics = {"train/loss": stats["loss"],
                       **({"train/lm_loss": stats["lm_loss"]} if "lm_loss" in stats else {}),
                       "train/lr": scheduler.get_last_lr()[0],
                       "train/padding_fraction": 1 - stats["forward_tokens"] / stats["padded_tokens"],
                       "perf/tokens_per_s": state["real_tokens"] / state["train_seconds"],
                       "perf/pairs_per_s": state["pairs"] / state["train_seconds"]}
            if step % cfg.run.eval_every == 0 or step == total_steps:
                with timer("eval"):
                    evaluation = evaluate_rm(accelerator.unwrap_model(model), held, cfg, accelerator.autocast, tau)
                metrics.update(_scalars(evaluation))
                if _improved(state, evaluation[stop.metric], cfg):
                    state["best_step"] = step
                    if stop.keep_best and is_main:
                        _save_best(accelerator.unwrap_model(model), run, step)
                state["stopped_early"] = stop.enabled and state["bad_evals"] >= stop.patience
            metrics.update(timer.pop())
            if step % cfg.run.log_every == 0 or "eval/loss" in metrics:
                run.log(step, metrics)
            bar.update(1, loss=stats["loss"])
            if step % cfg.run.save_every == 0 or step == total_steps or state["stopped_early"]:
                save_checkpoint(accelerator, run, step, state, cfg.run.keep_checkpoints)
            if cfg.run.stop_after_steps and steps_this_run >= cfg.run.stop_after_steps and step < total_steps:
                run.close()
                return {"stopped_at_step": step}

    accelerator.wait_for_everyone()
    summary = finish_rm(cfg, accelerator.unwrap_model(model), held, task, tau, train, state, run, accelerator)
    summary["skipped"] = dict(skips.counts)
    run.write_summary(summary)
    run.close()
    accelerator.wait_for_everyone()
    return summary


def finish_rm(cfg: RMConfig, model: RewardModel, held: list[Group], task, tau, train: list[Group], state: dict,
              run: RunDir, accelerator) -> dict:
    """Pick the final weights (best evaluation when kept), evaluate them, fit the normalisation,
    save RUN/model and return the summary figures."""
    stop = cfg.eval.early_stopping
    if stop.keep_best and state["best_step"] not in (None, state["step"]):
        model = load_reward_model(run.path / "best").to(accelerator.device)
    evaluation = evaluate_rm(model, held, cfg, accelerator.autocast, tau)
    summary = {"steps": state["step"], "best_step": state["best_step"], "stopped_early": state["stopped_early"],
               "eval_accuracy": evaluation["eval/accuracy"],
               "eval_accuracy_ci95": [evaluation["eval/accuracy_low"], evaluation["eval/accuracy_high"]],
               "eval_loss": evaluation["eval/loss"],
               "ece": evaluation["eval/ece"], "bayes_ceiling": evaluation.get("eval/bayes_ceiling"),
               "gold_accuracy": evaluation.get("eval/gold_accuracy"), "eval_pairs": evaluation["eval/pairs"],
               "accuracy_by_bucket": evaluation["accuracy_by_bucket"],
               "reliability_table": evaluation["reliability_table"],
               "pairs_per_s": state["pairs"] / max(state["train_seconds"], 1e-9),
               "tokens_per_s": state["real_tokens"] / max(state["train_seconds"], 1e-9),
               "forward_tokens_per_s": state["forward_tokens"] / max(state["train_seconds"], 1e-9),
               "padding_fraction": 1 - state["forward_tokens"] / max(state["padded_tokens"], 1.0),
               "train_seconds": state["train_seconds"]}
    if cfg.normalize.source != "none":
        prompts, responses, finished = normalization_samples(cfg, task, train)
        gain, bias = model.fit_normalization(prompts, responses, finished, cfg.normalize.target_mean,
                                             cfg.normalize.target_std)
        summary["norm_samples"] = len(prompts)
    else:
        gain, bias = model.norm_gain.tolist(), model.norm_bias.tolist()
    summary["norm_gain"], summary["norm_bias"] = gain, bias
    if accelerator.is_main_process:
        model.save(run.model_dir)
        summary["model"] = str(run.model_dir)
    return summary
