"""PPO (and GRPO / RLOO / REINFORCE++) fine-tuning of an SFT policy, on Accelerate.

`train_ppo(config)` is the Python API; `rlhfkit ppo CONFIG key=value …` calls it. One step reads
as named, timed stages (STYLE rule 5), each logged as `time/<stage>`:

    rollout → score → reference → rewards → advantages → update → sync → log / checkpoint

- rollout: sample G responses per prompt with the rollout engine (`rollout.engine`: HF `generate`
  on the policy, or vLLM); the behaviour log-probs of generation (÷ temperature) are PPO's old
  log-probs, checked by the first micro-batch's ratio (`ppo/first_ratio_dev`, c17), unless they
  are recomputed (`rollout.recompute_logprobs`, and always for an engine without exact log-probs).
- score: decode → text → reward source (RM(s) with their normalisation, the task's gold reward,
  or a callable); truncated responses get the missing-EOS penalty (c4); optional clipping.
- reference: reference log-probs and, for GAE, the values (critic or value head).
- rewards: −β·KL per token (or β·KL in the loss), the score on the last real token (c5).
- advantages: the registry's estimator (the loop asks its spec for values / groups).
- update: epochs × shuffled minibatches × micro-batches (`ppo_update.py`).
- sync: an engine holding its own copy of the weights (vLLM) loads the updated policy.

Stops at `max_steps`, on a reward plateau, or — with `TrainingStopped` and the last good
checkpoint left intact — when the KL exceeds `kl.max_kl` or too many minibatches had a
non-finite loss. Resume is exact: weights, optimisers, schedulers, RNG, the prompt position
(a pure function of the step), the KL controller and every counter are in the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, replace

import torch

from rlhfkit.algos.advantages import EstimatorSpec, get_estimator
from rlhfkit.algos.kl import AdaptiveKLController, FixedKLController
from rlhfkit.algos.logprobs import logprobs_from_logits, scale_logits_
from rlhfkit.algos.masking import masked_whiten
from rlhfkit.algos.ppo_losses import explained_variance
from rlhfkit.algos.rewards import apply_missing_eos_penalty, clip_rewards, per_token_rewards
from rlhfkit.config.base import config_to_dict
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.models.loading import save_hf
from rlhfkit.models.text import decode_response
from rlhfkit.rollout.engines import RolloutEngine
from rlhfkit.rollout.generate import Rollout
from rlhfkit.rundir import Progress, RunDir, StageTimer, print_effective_config, seed_everything
from rlhfkit.train.common import build_optimizer, build_scheduler, global_batch_indices, make_accelerator
from rlhfkit.train.ppo_checks import Watchdog, distinct_n
from rlhfkit.train.ppo_setup import (PromptSet, build_critic, build_policy, build_rollout_engine, build_scorer,
                                     load_prompts, load_ptx_examples, load_reward_models)
from rlhfkit.train.ppo_update import (MAX_STATS, Experience, LossSettings, Models, compile_training, ppo_update,
                                      pretrain_critic, ptx_loss_fn)
from rlhfkit.train.run import checkpoint_to_resume, latest_checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger("rlhfkit.ppo")

RANK_SEED_STRIDE = 100_003
"""Per-process seed offset (lm-human-preferences: seed + rank·100003, c21)."""
EVAL_SEED_OFFSET = 7_919
"""Evaluation samples use their own RNG stream so evaluating never shifts training's."""


class TrainingStopped(RuntimeError):
    """PPO stopped early on a failure condition (KL limit, non-finite losses); the message says
    why, and the run directory's latest checkpoint is the last good state."""


@dataclass
class PPORun:
    """Everything built once for a PPO run (the loop's context)."""

    cfg: PPOConfig
    accelerator: object
    run: RunDir
    models: Models
    reference: object
    engine: RolloutEngine
    tokenizer: object
    task: object
    prompts: PromptSet
    eval_prompts: PromptSet | None
    scorer: object
    spec: EstimatorSpec
    kl_ctl: object
    settings: LossSettings
    ptx_loss: object
    state: dict

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.models.policy)


@dataclass
class Batch:
    """One rollout on this process, plus the decoded text and the scores."""

    rollout: Rollout
    prompts: list
    group_ids: torch.Tensor
    texts: list[str] | None = None
    scores: torch.Tensor | None = None


# ------------------------------------------------------------------------------------ stages
def rollout_stage(ctx: PPORun, step: int) -> Batch:
    """Sample `group_size` responses for each of this step's prompts (this process's share)."""
    cfg, acc = ctx.cfg, ctx.accelerator
    per_step = cfg.rollout_batch_size // cfg.rollout.group_size
    chosen = global_batch_indices(len(ctx.prompts.ids), per_step, cfg.run.seed, step - 1)
    mine = chosen[acc.process_index :: acc.num_processes]
    group = cfg.rollout.group_size
    ids = [ctx.prompts.ids[i] for i in mine for _ in range(group)]
    rollout = ctx.engine.generate(ids)
    group_ids = torch.tensor(mine, device=rollout.response_ids.device).repeat_interleave(group)
    return Batch(rollout, [ctx.prompts.prompts[i] for i in mine for _ in range(group)], group_ids)


def decode(tokenizer, rollout: Rollout) -> list[str]:
    lengths = rollout.response_mask.sum(1).tolist()
    return [decode_response(tokenizer, row[:n])[0] for row, n in zip(rollout.response_ids.tolist(), lengths)]


def score_stage(ctx: PPORun, batch: Batch) -> dict[str, float]:
    """Score the decoded responses; the EOS trick and clipping shape `batch.scores`."""
    cfg = ctx.cfg.reward
    batch.texts = decode(ctx.tokenizer, batch.rollout)
    finished = batch.rollout.finished.cpu()
    out = ctx.scorer(batch.prompts, batch.texts, finished.tolist())
    metrics = {"reward/rm": out["score"].mean()}
    if "raw" in out:
        metrics["reward/rm_raw"] = out["raw"].mean()
    scores = out["score"]
    if cfg.missing_eos_penalty is not None:
        scores = apply_missing_eos_penalty(scores, finished, cfg.missing_eos_penalty, cfg.missing_eos_mode)
    if cfg.clip is not None:
        scores = clip_rewards(scores, cfg.clip)
    batch.scores = scores.to(batch.rollout.logprobs.device)
    metrics["reward/score"] = batch.scores.mean()
    if ctx.task is not None:
        metrics["reward/gold"] = sum(ctx.task.gold_rewards(batch.prompts, batch.texts, finished.tolist())) / len(scores)
    return metrics


@torch.no_grad()
def reference_stage(ctx: PPORun, rollout: Rollout, with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference log-probs (B, R) and, when the estimator needs them and `with_values`, values
    (B, R), in chunks of `forward_batch_size`. With `rollout.recompute_logprobs`, or an engine
    whose log-probs are not the training forward's (vLLM), the policy's forward also replaces
    `rollout.logprobs` (the old log-probs) with its own, so training-time numerics define them."""
    ids, mask = rollout.sequences()
    n_resp = rollout.response_ids.shape[1]
    chunk, temperature = ctx.cfg.forward_batch_size, ctx.cfg.rollout.temperature
    recompute = ctx.cfg.rollout.recompute_logprobs or not ctx.engine.exact_logprobs
    values_wanted = with_values and ctx.spec.needs_values
    ref_out, value_out, old_out = [], [], []
    models, acc = ctx.models, ctx.accelerator
    for start in range(0, ids.shape[0], chunk):
        sl = slice(start, start + chunk)
        with acc.autocast():
            logits = scale_logits_(ctx.reference.logits(ids[sl], mask[sl], n_resp, policy=ctx.policy), temperature)
            ref_out.append(logprobs_from_logits(logits, rollout.response_ids[sl]))
            policy_out = models.policy(ids[sl], mask[sl], n_resp) if recompute or (
                values_wanted and models.critic is None) else None
            if recompute:
                old_out.append(logprobs_from_logits(scale_logits_(policy_out.logits, temperature),
                                                    rollout.response_ids[sl]))
            if values_wanted:
                value_out.append(models.critic(ids[sl], mask[sl], n_resp) if models.critic is not None
                                 else policy_out.values)
    zero = torch.zeros((), device=ids.device)
    if recompute:
        rollout.logprobs = torch.where(rollout.response_mask, torch.cat(old_out).float(), zero)
    ref_logprobs = torch.where(rollout.response_mask, torch.cat(ref_out), zero)
    values = torch.where(rollout.response_mask, torch.cat(value_out), zero) if value_out else None
    return ref_logprobs, values


def global_sum(ctx: PPORun):
    """The all-reduce sum for whitening statistics with several processes (None with one): each
    process holds rollout_batch_size / num_processes rows, and whitening over the global rollout
    makes N processes × B rows equal one process × N·B rows (tested)."""
    acc = ctx.accelerator
    return (lambda t: acc.reduce(t, "sum")) if acc.num_processes > 1 else None


def rewards_stage(ctx: PPORun, batch: Batch, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Per-token rewards (B, R): −β·KL per token when the KL is in the reward, the score on the
    last real token; optionally whitened without restoring the mean."""
    cfg, roll = ctx.cfg, batch.rollout
    beta = ctx.kl_ctl.value if cfg.kl.placement == "reward" else 0.0
    rewards, _ = per_token_rewards(batch.scores, roll.logprobs, ref_logprobs, roll.response_mask, beta,
                                   cfg.kl.estimator)
    if cfg.reward.whiten:
        rewards = masked_whiten(rewards, roll.response_mask, shift_mean=False, reduce_sum=global_sum(ctx))
    seq_kl = torch.where(roll.response_mask, roll.logprobs - ref_logprobs, 0.0).sum(-1)
    return rewards, {"kl/ref": seq_kl.mean(), "kl/coef": ctx.kl_ctl.value,
                     "reward/total": rewards.sum(-1).mean()}


def advantages_stage(ctx: PPORun, batch: Batch, ref_logprobs, values, rewards) -> tuple[Experience, dict]:
    """Advantages (and GAE's returns) from the registry's estimator, packed as an Experience."""
    cfg, roll = ctx.cfg, batch.rollout
    advantages, returns = ctx.spec.fn(scores=batch.scores, rewards=rewards, values=values,
                                      response_mask=roll.response_mask, group_ids=batch.group_ids,
                                      gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, reduce_sum=global_sum(ctx))
    whiten = cfg.whiten_advantages if cfg.whiten_advantages is not None else ctx.spec.needs_values
    if whiten:
        advantages = masked_whiten(advantages, roll.response_mask, shift_mean=True, reduce_sum=global_sum(ctx))
    ids, mask = roll.sequences()
    exp = Experience(ids, mask, roll.response_ids, roll.response_mask, roll.logprobs, ref_logprobs,
                     advantages, values, returns)
    metrics = {}
    if values is not None:
        metrics["value/explained_variance"] = explained_variance(values, returns, roll.response_mask)
        metrics["value/mean"] = torch.where(roll.response_mask, values, 0.0).sum() / roll.response_mask.sum()
    return exp, metrics


def response_metrics(batch: Batch) -> dict[str, float]:
    roll = batch.rollout
    lengths = roll.response_mask.sum(1).tolist()
    rows = [row[:n] for row, n in zip(roll.response_ids.tolist(), lengths)]
    return {"response/length": sum(lengths) / len(lengths), "response/eos_fraction": roll.finished.float().mean(),
            "response/distinct_2": distinct_n(rows, 2)}


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(ctx: PPORun) -> dict[str, float]:
    """Held-out prompts, one sample each at the rollout temperature, on a separate RNG stream:
    mean training score (`rm`), gold reward and sequence KL to the reference (k1 sum, nats)."""
    if ctx.eval_prompts is None:
        return {}
    rank = ctx.accelerator.process_index
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.cfg.run.seed + EVAL_SEED_OFFSET + rank * RANK_SEED_STRIDE)
        roll = ctx.engine.generate(ctx.eval_prompts.ids)
    batch = Batch(roll, list(ctx.eval_prompts.prompts), torch.zeros(len(ctx.eval_prompts.ids), dtype=torch.long))
    metrics = score_stage(ctx, batch)
    ref_logprobs, _ = reference_stage(ctx, roll, with_values=False)
    kl = torch.where(roll.response_mask, roll.logprobs - ref_logprobs, 0.0).sum(-1).mean()
    out = {"rm": float(metrics["reward/rm"]), "kl_to_ref": float(kl)}
    if "reward/gold" in metrics:
        out["gold"] = float(metrics["reward/gold"])
    return out


# ------------------------------------------------------------------------------------ setup
def derived_sizes(cfg: PPOConfig, num_processes: int) -> dict:
    """Batch arithmetic, checked once and saved with the config."""
    for name in ("rollout_batch_size", "minibatch_size"):
        if getattr(cfg, name) % num_processes:
            raise ValueError(f"{name} {getattr(cfg, name)} must split evenly over {num_processes} processes")
    prompts_per_step = cfg.rollout_batch_size // cfg.rollout.group_size
    if prompts_per_step % num_processes:
        # Each process samples whole groups; uneven shares would give the processes different
        # numbers of minibatches, and the collective calls of the update would wait forever.
        raise ValueError(f"rollout_batch_size / rollout.group_size = {prompts_per_step} prompts per step must split "
                         f"evenly over {num_processes} processes")
    minibatch_local = cfg.minibatch_size // num_processes
    micro = min(cfg.microbatch_size, minibatch_local)
    if minibatch_local % micro:
        raise ValueError(f"per-process minibatch {minibatch_local} must be a multiple of microbatch_size {micro}")
    n_minibatches = cfg.rollout_batch_size // cfg.minibatch_size
    return {"num_processes": num_processes, "prompts_per_step": prompts_per_step,
            "rollout_per_process": cfg.rollout_batch_size // num_processes, "minibatch_per_process": minibatch_local,
            "microbatch_size": micro, "grad_accum_steps": minibatch_local // micro,
            "minibatches_per_step": n_minibatches, "optimizer_steps": cfg.max_steps * cfg.ppo_epochs * n_minibatches}


def build_run(cfg: PPOConfig) -> PPORun:
    """Models, data, reward source, optimisers and run directory; restores the latest checkpoint."""
    from rlhfkit.tasks import get_task

    accelerator = make_accelerator(cfg.run)
    seed_everything(cfg.run.seed + accelerator.process_index * RANK_SEED_STRIDE)
    spec = get_estimator(cfg.advantage)
    if spec.needs_groups and cfg.rollout.group_size < 2:
        raise ValueError(f"advantage={cfg.advantage} needs rollout.group_size >= 2 (responses per prompt)")
    derived = derived_sizes(cfg, accelerator.num_processes)
    task = get_task(cfg.data.task, seed=cfg.data.task_seed) if cfg.data.task else None
    head = spec.needs_values and cfg.value.kind == "head"
    policy, reference, tokenizer = build_policy(cfg, with_value_head=head)
    engine = build_rollout_engine(cfg, policy.lm, tokenizer, accelerator)
    skips: Counter = Counter()
    prompts = load_prompts(cfg, task, tokenizer, "train", cfg.data.n_train_prompts, skips)
    eval_prompts = load_prompts(cfg, task, tokenizer, "eval", cfg.data.n_eval_prompts, skips) \
        if (task is not None or cfg.data.eval_prompts_path) and cfg.data.n_eval_prompts else None
    reward_models = load_reward_models(cfg.reward.rm_paths) if cfg.reward.source == "rm" else []
    critic = build_critic(cfg, reward_models, tokenizer) if spec.needs_values and not head else None
    derived.update(train_prompts=len(prompts.ids), skipped=dict(skips))
    run = RunDir(cfg.run.out_dir, is_main=accelerator.is_main_process)
    run.save_config(config_to_dict(cfg), derived)
    print_effective_config("ppo", config_to_dict(cfg), derived, accelerator.is_main_process)

    total = derived["optimizer_steps"]
    optimizer = build_optimizer(policy.named_parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total)
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    models = Models(accelerator, policy, optimizer, scheduler, max_grad_norm=cfg.optim.max_grad_norm,
                    critic_max_grad_norm=cfg.critic_optim.max_grad_norm)
    if critic is not None:
        c_opt = build_optimizer(critic.named_parameters(), cfg.critic_optim)
        c_sched = build_scheduler(c_opt, cfg.critic_optim, total)
        models.critic, models.critic_optimizer, models.critic_scheduler = accelerator.prepare(critic, c_opt, c_sched)
    if cfg.compile:
        compile_training(models)
    if reference.model is not None:
        reference.model.to(accelerator.device)
    for rm in reward_models:
        rm.to(accelerator.device)
    if cfg.kl.ref_refresh_every:
        accelerator.register_for_checkpointing(reference)
    kl_ctl = AdaptiveKLController(cfg.kl.init_coef, cfg.kl.target, cfg.kl.horizon) \
        if cfg.kl.controller == "adaptive" else FixedKLController(cfg.kl.init_coef)
    # kl_loss_coef is set per step from the KL controller (update_stage).
    settings = LossSettings(cfg.clip_eps, cfg.value_clip_eps, cfg.vf_coef, cfg.entropy_coef, 0.0, cfg.kl.estimator,
                            cfg.loss_agg, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.ptx.coef)
    ptx_examples = load_ptx_examples(cfg, task, tokenizer)
    ptx = ptx_loss_fn(ptx_examples, cfg.ptx.batch_size, tokenizer.pad_token_id, cfg.run.seed) if ptx_examples else None
    ctx = PPORun(cfg, accelerator, run, models, reference, engine, tokenizer, task, prompts, eval_prompts,
                 build_scorer(cfg.reward, task, reward_models), spec, kl_ctl, settings, ptx,
                 {"step": 0, "skipped_minibatches": 0})
    _start_or_resume(ctx)
    return ctx


def _start_or_resume(ctx: PPORun) -> None:
    """Load the latest checkpoint, or (fresh run) evaluate the SFT policy and pre-train the critic."""
    cfg = ctx.cfg
    checkpoint = checkpoint_to_resume(ctx.run, cfg.run.resume)
    if checkpoint is not None:
        ctx.state = load_checkpoint(ctx.accelerator, checkpoint)
        ctx.engine.sync_weights(ctx.policy.lm)  # the engine was loaded from policy.path, not the checkpoint
        ctx.kl_ctl.load_state_dict(ctx.state["kl_controller"])
        ctx.run.truncate_metrics(ctx.state["step"])
        return
    ctx.state["eval_sft"] = evaluate(ctx)
    if cfg.value.pretrain_steps and ctx.models.critic is not None:
        minibatch = cfg.minibatch_size // ctx.accelerator.num_processes
        for k in range(cfg.value.pretrain_steps):
            # The first prompt batches: PPO will see them again, which is harmless for the critic.
            exp = _experience(ctx, batch := rollout_stage(ctx, k + 1), {})
            loss = pretrain_critic(ctx.models, exp, minibatch, cfg.microbatch_size, cfg.ppo_epochs, ctx.settings)
            ctx.run.log(0, {"value/pretrain_loss": loss, "value/pretrain_step": k + 1,
                            "reward/score": batch.scores.mean()})


def _experience(ctx: PPORun, batch: Batch, metrics: dict) -> Experience:
    """score → reference → rewards → advantages for a rollout (used by critic pre-training)."""
    metrics.update(score_stage(ctx, batch))
    ref_logprobs, values = reference_stage(ctx, batch.rollout)
    rewards, kl_metrics = rewards_stage(ctx, batch, ref_logprobs)
    metrics.update(kl_metrics)
    return advantages_stage(ctx, batch, ref_logprobs, values, rewards)[0]


# ------------------------------------------------------------------------------------ the loop
BAR_FIELDS = {"reward": "reward/score", "kl": "kl/ref", "beta": "kl/coef", "clipfrac": "ppo/clipfrac",
              "entropy": "policy/entropy", "len": "response/length"}
"""What the progress bar shows after each step (short name → metric)."""


def train_ppo(cfg: PPOConfig) -> dict:
    """Run PPO into `cfg.run.out_dir`; return the summary (see `finish`)."""
    ctx = build_run(cfg)
    acc, state, timer = ctx.accelerator, ctx.state, StageTimer()
    watchdog = Watchdog(state.setdefault("watch", {}), logger)
    steps_this_run = 0
    with Progress(cfg.max_steps, "ppo", cfg.run.progress and acc.is_main_process, state["step"]) as bar:
        while state["step"] < cfg.max_steps:
            step = state["step"] + 1
            with timer("rollout"):
                batch = rollout_stage(ctx, step)
            with timer("score"):
                metrics = score_stage(ctx, batch)
            with timer("reference"):
                ref_logprobs, values = reference_stage(ctx, batch.rollout)
            with timer("rewards"):
                rewards, kl_metrics = rewards_stage(ctx, batch, ref_logprobs)
                metrics.update(kl_metrics)
            check_kl_limit(ctx, float(acc.reduce(kl_metrics["kl/ref"], "mean")), step)
            with timer("advantages"):
                exp, adv_metrics = advantages_stage(ctx, batch, ref_logprobs, values, rewards)
                metrics.update(adv_metrics)
            with timer("update"):
                update_stats, skipped = update_stage(ctx, exp, step)
            with timer("sync"):
                ctx.engine.sync_weights(ctx.policy.lm)
            state["skipped_minibatches"] += skipped
            check_skips(ctx, step)
            with timer("log"):
                metrics.update(update_stats, **response_metrics(batch))
                metrics = reduce_metrics(acc, metrics)
                ctx.kl_ctl.update(metrics["kl/ref"], cfg.rollout_batch_size)
                if cfg.kl.ref_refresh_every and step % cfg.kl.ref_refresh_every == 0:
                    ctx.reference.refresh(ctx.policy)
                metrics.update(step_extras(ctx, watchdog, metrics, timer))
                log_step(ctx, step, metrics, batch)
            state["step"] = step
            steps_this_run += 1
            stop = plateau_reached(ctx.cfg, state, metrics["reward/score"], step)
            if step % cfg.run.save_every == 0 or step == cfg.max_steps or stop:
                save_checkpoint(acc, ctx.run, step, checkpoint_state(ctx), cfg.run.keep_checkpoints)
            bar.update(1, **{short: metrics[key] for short, key in BAR_FIELDS.items() if key in metrics})
            if stop:
                logger.warning("stopping at step %d: the mean score has not improved by %g for %d steps",
                               step, cfg.stop.plateau_min_delta, cfg.stop.plateau_patience)
                break
            if cfg.run.stop_after_steps and steps_this_run >= cfg.run.stop_after_steps and step < cfg.max_steps:
                ctx.run.close()
                return {"stopped_at_step": step}
    return finish(ctx, "plateau" if state["step"] < cfg.max_steps else "max_steps")


def update_stage(ctx: PPORun, exp: Experience, step: int) -> tuple[dict[str, float], int]:
    """PPO epochs over the rollout; the shuffle and the PPO-ptx data are functions of the step. With
    the KL in the loss its β is the controller's current value, the `kl/coef` logged for the step."""
    cfg, n_proc = ctx.cfg, ctx.accelerator.num_processes
    settings = replace(ctx.settings, kl_loss_coef=ctx.kl_ctl.value if cfg.kl.placement == "loss" else 0.0)
    shuffle = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)
    first_opt_step = (step - 1) * cfg.ppo_epochs * (cfg.rollout_batch_size // cfg.minibatch_size)
    return ppo_update(ctx.models, exp, cfg.minibatch_size // n_proc, cfg.microbatch_size, cfg.ppo_epochs,
                      settings, shuffle, ctx.ptx_loss, first_opt_step)


def check_kl_limit(ctx: PPORun, kl: float, step: int) -> None:
    """Stop before updating on a rollout whose KL to the reference exceeds `kl.max_kl`."""
    limit = ctx.cfg.kl.max_kl
    if limit is not None and not kl <= limit:
        fail(ctx, f"KL to the reference {kl:.4g} nats exceeds kl.max_kl={limit:g} at step {step}; the policy "
                  "was not updated")


def check_skips(ctx: PPORun, step: int) -> None:
    """Stop once more minibatches than allowed had a non-finite loss."""
    skipped, limit = ctx.state["skipped_minibatches"], ctx.cfg.stop.max_skipped_minibatches
    if skipped > limit:
        fail(ctx, f"{skipped} minibatches had a non-finite loss (limit stop.max_skipped_minibatches={limit}) by "
                  f"step {step}")


def fail(ctx: PPORun, message: str) -> None:
    """Record the reason in summary.json and raise `TrainingStopped`; no checkpoint is written."""
    last = latest_checkpoint(ctx.cfg.run.out_dir)
    message += f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet"
    logger.error(message)
    ctx.run.write_summary({"stopped": True, "reason": message, "last_checkpoint": str(last) if last else None})
    ctx.run.close()
    raise TrainingStopped(message)


def plateau_reached(cfg: PPOConfig, state: dict, score: float, step: int) -> bool:
    """Patience on the mean score: True after `plateau_patience` steps without a gain of
    `plateau_min_delta` over the best so far."""
    if cfg.stop.plateau_patience is None:
        return False
    if score > state.get("best_score", -math.inf) + cfg.stop.plateau_min_delta:
        state["best_score"], state["best_step"] = score, step
    return step - state.get("best_step", step) >= cfg.stop.plateau_patience


def reduce_metrics(acc, metrics: dict) -> dict[str, float]:
    """Every metric as a float over all processes: the mean (each process holds the same number of
    rollouts, so the mean of means is the global mean), and the maximum for `MAX_STATS`."""
    out = {}
    for key, value in metrics.items():
        tensor = torch.as_tensor(value, dtype=torch.float32, device=acc.device)
        if acc.num_processes == 1:
            out[key] = float(tensor)
        elif key in MAX_STATS:
            out[key] = float(acc.gather(tensor.reshape(1)).max())
        else:
            out[key] = float(acc.reduce(tensor, "mean"))
    return out


def step_extras(ctx: PPORun, watchdog, metrics: dict, timer: StageTimer) -> dict[str, float]:
    """Timings, throughput, counters and learning rates; runs the watchdog's warnings."""
    extras = timer.pop()
    extras["time/step"] = sum(extras.values())
    extras["perf/samples_per_s"] = ctx.cfg.rollout_batch_size / max(extras["time/step"], 1e-9)
    extras["ppo/skipped_minibatches"] = ctx.state["skipped_minibatches"]
    extras["lr/policy"] = ctx.models.scheduler.get_last_lr()[0]
    if ctx.models.critic_scheduler is not None:
        extras["lr/critic"] = ctx.models.critic_scheduler.get_last_lr()[0]
    watchdog.check(metrics, fp32=ctx.cfg.run.precision == "fp32")
    return extras


def log_step(ctx: PPORun, step: int, metrics: dict, batch: Batch) -> None:
    if step % ctx.cfg.run.log_every == 0:
        ctx.run.log(step, metrics)
    if step % ctx.cfg.sample_every == 0 and ctx.cfg.n_logged_samples:
        n = ctx.cfg.n_logged_samples
        finished = batch.rollout.finished.tolist()
        ctx.run.log_samples(step, [{"prompt": p, "response": r, "finished": f, "score": float(s)}
                                   for p, r, f, s in zip(batch.prompts[:n], batch.texts[:n], finished[:n],
                                                         batch.scores[:n])])


def checkpoint_state(ctx: PPORun) -> dict:
    return {**ctx.state, "kl_controller": ctx.kl_ctl.state_dict()}


def finish(ctx: PPORun, reason: str) -> dict:
    """Held-out evaluation, the final model and summary.json.

    Summary keys: `gold_reward_sft` / `gold_reward_final` (task gold reward of held-out samples
    before / after), `rm_reward_final` (the training score source on them), `kl_to_ref_final`
    (sequence KL, nats), `steps`, `stop_reason`, `skipped_minibatches`, `model`."""
    final = evaluate(ctx)
    before = ctx.state.get("eval_sft", {})
    summary = {"steps": ctx.state["step"], "stop_reason": reason,
               "skipped_minibatches": ctx.state["skipped_minibatches"], "kl_coef_final": ctx.kl_ctl.value}
    if final:
        summary.update(rm_reward_sft=before.get("rm"), rm_reward_final=final["rm"],
                       kl_to_ref_final=final["kl_to_ref"])
    if "gold" in final:
        summary.update(gold_reward_sft=before.get("gold"), gold_reward_final=final["gold"])
    if ctx.accelerator.is_main_process:
        save_hf(ctx.policy.lm, ctx.tokenizer, ctx.run.model_dir)
        summary["model"] = str(ctx.run.model_dir)
    ctx.run.write_summary(summary)
    ctx.run.close()
    ctx.accelerator.wait_for_everyone()
    return summary
