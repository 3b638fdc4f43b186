"""The PPO update: several epochs of shuffled minibatches over one rollout, each minibatch split
into micro-batches whose gradients accumulate to exactly the minibatch's loss.

Loss scaling under accumulation lives in one place, `micro_weight`: every loss term is reduced
inside its micro-batch and re-weighted by the micro-batch's share of the minibatch's count (tokens
for token means, sequences for sequence means), so 1 × 8 and 8 × 1 give the same gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_from_logits, scale_logits_
from rlhfkit.algos.masking import masked_mean
from rlhfkit.algos.ppo_losses import clipped_policy_loss, clipped_value_loss, entropy_bonus, kl_loss
from rlhfkit.data.collate import left_pad, right_pad


@dataclass
class Experience:
    """One rollout with everything the update reads; tensors on the device, first dim B.

    ids/mask (B, P + R): left-padded prompt + right-padded response; the response-aligned tensors
    are (B, R) and 0 where `response_mask` (True = real response token, EOS included) is False.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    """Behaviour log-probs from generation (÷ temperature): PPO's old log-probs."""
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def select(self, index: torch.Tensor) -> "Experience":
        """The rows in `index` (a 1-D long tensor)."""
        return Experience(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                             for f in fields(self)})


@dataclass(frozen=True)
class LossSettings:
    """The hyperparameters of the update's loss terms (flat, from the config)."""

    clip_eps: float
    value_clip_eps: float | None
    vf_coef: float
    entropy_coef: float
    kl_loss_coef: float
    """β of a KL term in the loss (0 when the KL is in the reward)."""
    kl_estimator: str
    agg_mode: str
    max_len: int
    """Generation budget (the Dr. GRPO constant normaliser)."""
    temperature: float
    ptx_coef: float


def micro_weight(agg_mode: str, micro_mask: torch.Tensor, minibatch_mask: torch.Tensor) -> float:
    """Share of one micro-batch in its minibatch's loss: tokens / tokens for "token_mean",
    rows with tokens / rows for "seq_mean_token_mean", rows / rows for the constant normaliser."""
    if agg_mode == "token_mean":
        return float(micro_mask.sum()) / max(1, float(minibatch_mask.sum()))
    if agg_mode == "seq_mean_token_mean":
        return float(micro_mask.any(-1).sum()) / max(1, float(minibatch_mask.any(-1).sum()))
    return micro_mask.shape[0] / minibatch_mask.shape[0]


MAX_STATS = ("ppo/ratio_max", "ppo/first_ratio_dev")
"""Stats reduced by max, not by a weighted mean."""


@dataclass
class Models:
    """What the update trains: the policy (optionally with a value head), an optional separate
    critic, their optimisers and schedulers, and the accelerator that wraps them."""

    accelerator: object
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    critic: torch.nn.Module | None = None
    critic_optimizer: torch.optim.Optimizer | None = None
    critic_scheduler: object = None
    max_grad_norm: float | None = None
    critic_max_grad_norm: float | None = None
    compiled: dict[str, Callable] = field(default_factory=dict)
    """torch.compile'd training forwards by model name ("policy", "critic"), see `compile_training`."""

    def train_forward(self, name: str) -> Callable:
        """The model's forward for the update: compiled when `compile_training` ran."""
        compiled = self.compiled.get(name)
        return getattr(self, name) if compiled is None else compiled


def compile_training(models: Models) -> None:
    """Compile the policy's and the critic's forward for `micro_losses` (the modules stay as they
    are: parameters, state dicts, and the eager forward of generation, no-grad passes, critic
    pre-training and the PTX loss)."""
    for name in ("policy", "critic"):
        model = getattr(models, name)
        if model is not None:
            models.compiled[name] = torch.compile(model)


def micro_losses(models: Models, mb: Experience, s: LossSettings, want_entropy: bool,
                 ratio_check: bool = False) -> tuple[dict, dict]:
    """Loss terms of one micro-batch (each reduced within it) and detached stats."""
    n_resp = mb.response_ids.shape[1]
    out = models.train_forward("policy")(mb.ids, mb.mask, n_resp)
    logits = scale_logits_(out.logits, s.temperature)  # ÷ T once, in place: no (B, R, V) copy
    logprobs = logprobs_from_logits(logits, mb.response_ids)
    policy_loss, pstats = clipped_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.response_mask, s.clip_eps,
                                              s.agg_mode, s.max_len)
    terms = {"policy": policy_loss}
    stats = {"ppo/clipfrac": pstats.clipfrac, "ppo/approx_kl": pstats.approx_kl, "ppo/ratio_mean": pstats.ratio_mean,
             "ppo/ratio_max": pstats.ratio_max}
    if ratio_check:
        stats["ppo/first_ratio_dev"] = torch.maximum(pstats.ratio_max - 1, 1 - pstats.ratio_min)
    if want_entropy or s.entropy_coef:
        entropy = entropy_from_logits(logits if s.entropy_coef else logits.detach())
        stats["policy/entropy"] = masked_mean(entropy.detach(), mb.response_mask)
        if s.entropy_coef:
            terms["entropy"] = -s.entropy_coef * entropy_bonus(entropy, mb.response_mask, s.agg_mode, s.max_len)
    if s.kl_loss_coef:
        kl_term = kl_loss(logprobs, mb.ref_logprobs, mb.response_mask, s.kl_estimator, s.agg_mode, s.max_len)
        terms["kl"] = s.kl_loss_coef * kl_term
        stats["loss/kl"] = kl_term.detach()
    if mb.returns is not None:
        values = out.values if models.critic is None else models.train_forward("critic")(mb.ids, mb.mask, n_resp)
        value_loss, vclip = clipped_value_loss(values, mb.values, mb.returns, mb.response_mask, s.value_clip_eps)
        # A shared trunk weighs the value loss against the policy loss; a separate critic has its own optimiser.
        terms["value"] = value_loss * (s.vf_coef if models.critic is None else 1.0)
        stats["loss/value"] = value_loss.detach()
        stats["value/clipfrac"] = vclip
    stats["loss/policy"] = policy_loss.detach()
    return terms, stats


def _reduction(name: str) -> str:
    """Which micro-batch weight a loss term or stat takes: value terms are token means."""
    return "token" if "value" in name else "agg"


def _optimizer_step(models: Models) -> None:
    acc = models.accelerator
    pairs = [(models.policy, models.optimizer, models.scheduler, models.max_grad_norm)]
    if models.critic is not None:
        pairs.append((models.critic, models.critic_optimizer, models.critic_scheduler, models.critic_max_grad_norm))
    for model, optimizer, scheduler, max_norm in pairs:
        if max_norm:
            acc.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def _skip_step(models: Models) -> None:
    """Drop the accumulated gradients of a minibatch with a non-finite loss; the schedulers still
    advance so the LR follows the planned number of steps."""
    pairs = ((models.optimizer, models.scheduler), (models.critic_optimizer, models.critic_scheduler))
    for optimizer, scheduler in pairs:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()


PtxLoss = Callable[[torch.nn.Module, int], torch.Tensor]
"""(policy, optimiser-step index) → mean SFT NLL of that step's PPO-ptx batch."""


def minibatch_step(models: Models, exp: Experience, index: torch.Tensor, micro_size: int, s: LossSettings,
                   want_entropy: bool = False, ptx_loss: PtxLoss | None = None, opt_step: int = 0,
                   ratio_check: bool = False) -> dict[str, float] | None:
    """Accumulate the gradients of one minibatch over micro-batches and take one optimiser step.
    Returns the minibatch's stats (weighted means; maxima for `MAX_STATS`), or None when a loss was
    non-finite and the step was skipped. `ratio_check` adds `ppo/first_ratio_dev` from the first
    micro-batch."""
    acc = models.accelerator
    mb_mask = exp.response_mask[index]
    totals: dict[str, float] = {}
    chunks = list(index.split(micro_size))
    for k, micro in enumerate(chunks):
        mb = exp.select(micro)
        # The value loss is a token mean whatever the policy loss's aggregation.
        weights = {"agg": micro_weight(s.agg_mode, mb.response_mask, mb_mask),
                   "token": micro_weight("token_mean", mb.response_mask, mb_mask)}
        with acc.autocast():
            terms, stats = micro_losses(models, mb, s, want_entropy, ratio_check and k == 0)
            loss = sum(value * weights[_reduction(name)] for name, value in terms.items())
        if not _backward_if_finite(acc, models, loss):
            return None
        for key, value in stats.items():
            value = float(value)
            if key in MAX_STATS:
                totals[key] = max(totals.get(key, value), value)
            else:
                totals[key] = totals.get(key, 0.0) + weights[_reduction(key)] * value
    if ptx_loss is not None:
        # PPO-ptx: one SFT batch per optimiser step, its own mean, added with weight γ.
        with acc.autocast():
            ptx = ptx_loss(models.policy, opt_step)
        if not _backward_if_finite(acc, models, s.ptx_coef * ptx):
            return None
        totals["loss/ptx"] = float(ptx.detach())
    _optimizer_step(models)
    return totals


def _backward_if_finite(acc, models: Models, loss: torch.Tensor) -> bool:
    """Backward of a loss finite on every process; otherwise drop the minibatch's gradients and
    return False. The decision is global: with DDP a process skipping its backward alone would
    leave the others waiting in the gradient all-reduce, and the processes' weights would part."""
    finite = torch.isfinite(loss.detach()).reshape(1).float()
    if acc.num_processes > 1:
        finite = acc.gather(finite).min()
    if not bool(finite):
        _skip_step(models)
        return False
    acc.backward(loss)
    return True


def ppo_update(models: Models, exp: Experience, minibatch_size: int, micro_size: int, epochs: int, s: LossSettings,
               generator: torch.Generator, ptx_loss: PtxLoss | None = None,
               first_opt_step: int = 0) -> tuple[dict[str, float], int]:
    """`epochs` passes over `exp` in shuffled minibatches (without replacement, c11).

    Returns (stats averaged over the minibatches that reported them, skipped minibatches). Entropy
    is measured in epoch 0 only (the rollout policy). `ppo/first_ratio_dev` is max |ρ − 1| on the
    very first micro-batch, before any update: it checks that the rollout's log-probs equal the
    training forward pass's (c17)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    skipped = 0
    opt_step = first_opt_step
    for epoch in range(epochs):
        order = torch.randperm(len(exp), generator=generator).to(exp.ids.device)
        for index in order.split(minibatch_size):
            first = not sums and not skipped
            stats = minibatch_step(models, exp, index, micro_size, s, want_entropy=epoch == 0, ptx_loss=ptx_loss,
                                   opt_step=opt_step, ratio_check=first)
            opt_step += 1
            if stats is None:
                skipped += 1
                continue
            for key, value in stats.items():
                sums[key] = max(sums.get(key, value), value) if key in MAX_STATS else sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
    return {k: v if k in MAX_STATS else v / counts[k] for k, v in sums.items()}, skipped


def pretrain_critic(models: Models, exp: Experience, minibatch_size: int, micro_size: int, epochs: int,
                    s: LossSettings) -> float:
    """Train only the separate critic on one rollout's returns (epochs × shuffled minibatches);
    its scheduler does not advance. Returns the mean value loss."""
    acc, critic, total, count = models.accelerator, models.critic, 0.0, 0.0
    n_resp = exp.response_ids.shape[1]
    for _ in range(epochs):
        for index in torch.randperm(len(exp)).to(exp.ids.device).split(minibatch_size):
            mb_mask = exp.response_mask[index]
            for micro in index.split(micro_size):
                mb = exp.select(micro)
                with acc.autocast():
                    values = critic(mb.ids, mb.mask, n_resp)
                    loss = clipped_value_loss(values, mb.values, mb.returns, mb.response_mask, s.value_clip_eps)[0]
                weight = micro_weight("token_mean", mb.response_mask, mb_mask)
                acc.backward(loss * weight)
                total, count = total + float(loss.detach()) * weight, count + weight
            if models.critic_max_grad_norm:
                acc.clip_grad_norm_(critic.parameters(), models.critic_max_grad_norm)
            models.critic_optimizer.step()
            models.critic_optimizer.zero_grad(set_to_none=True)
    return total / max(count, 1e-9)


def sft_nll(policy: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> torch.Tensor:
    """Mean NLL per response token (temperature 1) of demonstrations, in the rollout layout
    (prompts left-padded, responses right-padded) so the policy's forward is reused."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    response_ids, response_mask = right_pad(responses, pad_id)
    device = next(policy.parameters()).device
    ids = torch.cat([prompt_ids, response_ids], 1).to(device)
    mask = torch.cat([prompt_mask, response_mask], 1).to(device)
    response_ids, response_mask = response_ids.to(device), response_mask.to(device)
    logits = policy(ids, mask, response_ids.shape[1]).logits
    return -masked_mean(logprobs_from_logits(logits, response_ids), response_mask)


def ptx_loss_fn(examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int) -> PtxLoss:
    """The PPO-ptx loss: optimiser step k reads batch k of a seeded shuffle of `examples`, so the
    data position after a resume is the step count."""
    from rlhfkit.train.common import global_batch_indices

    def loss(policy: torch.nn.Module, opt_step: int) -> torch.Tensor:
        chosen = [examples[i] for i in global_batch_indices(len(examples), batch_size, seed, opt_step)]
        return sft_nll(policy, [p for p, _ in chosen], [r for _, r in chosen], pad_id)

    return loss
