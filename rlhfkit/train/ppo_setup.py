"""Builders of the PPO stage: prompts, models (policy, reference, value function), the reward
source and the PPO-ptx data. Each turns a config section into plain objects; the loop never reads
the config of a component.
"""

from __future__ import annotations

import copy
import importlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from pathlib import Path

import torch

from rlhfkit.config.ppo import PPOConfig, RewardConfig
from rlhfkit.models.loading import apply_lora, disable_dropout, load_causal_lm, load_tokenizer, resolve_model_path
from rlhfkit.models.policy import (Critic, PolicyWithValueHead, Reference, critic_from_pretrained,
                                   critic_from_reward_model)
from rlhfkit.models.text import encode_prompt, encode_response
from rlhfkit.rollout.engines import HFEngine, RolloutEngine, SamplingSettings


@dataclass(frozen=True)
class PromptSet:
    """Tokenised prompts: the original prompt (text or messages) and its token ids."""

    prompts: list
    ids: list[list[int]]


def load_prompts(cfg: PPOConfig, task, tokenizer, split: str, n: int, skips: Counter) -> PromptSet:
    """`n` prompts of a task split, or the first `n` usable ones of the split's prompt file,
    tokenised. Prompts longer than `data.max_prompt_tokens` are skipped, counted in `skips`, and
    replaced by later rows of the file. Training reads the file after `data.prompts_skip` rows;
    evaluation from the training file reads only those first rows, so it never sees a training
    prompt."""
    path = cfg.data.prompts_path if split == "train" else cfg.data.eval_prompts_path
    if path:
        from rlhfkit.data import read_records

        records, report = read_records(path, kind="prompt", on_error=cfg.data.on_error)
        skips.update({f"{split}_{reason}": n for reason, n in report.counts.items()})
        if split == "train":
            records = records[cfg.data.prompts_skip:]
        elif cfg.data.prompts_path and Path(path).resolve() == Path(cfg.data.prompts_path).resolve():
            if not cfg.data.prompts_skip:
                raise ValueError(f"data.eval_prompts_path is the training file {path} and data.prompts_skip is 0: "
                                 "the held-out evaluation would use training prompts; set data.prompts_skip to "
                                 "the rows kept for evaluation")
            records = records[:cfg.data.prompts_skip]
    elif task is not None:
        records = task.prompts(split, n)
    else:
        raise ValueError("PPO needs data.task or data.prompts_path")
    prompts, ids = [], []
    for record in records:
        if len(prompts) == n:
            break
        tokens = encode_prompt(tokenizer, record.prompt)
        if len(tokens) > cfg.data.max_prompt_tokens:
            skips[f"{split}_prompt_too_long"] += 1
            continue
        prompts.append(record.prompt)
        ids.append(tokens)
    if not prompts:
        raise ValueError(f"no {split} prompts left after skipping those over data.max_prompt_tokens")
    return PromptSet(prompts, ids)


def build_policy(cfg: PPOConfig, with_value_head: bool):
    """(policy, reference, tokenizer): the SFT model (dropout off, LoRA optional) wrapped with an
    optional value head, and the reference: the model of `kl.reference_path`, or else a frozen copy
    of the starting weights (with LoRA, those weights with the adapters switched off)."""
    if not cfg.policy.path:
        raise ValueError("policy.path must point at the starting policy (the SFT stage's RUN/model, or an "
                         "earlier PPO run's)")
    lm, tokenizer = load_causal_lm(cfg.policy.path), load_tokenizer(cfg.policy.path)
    reference = load_reference_lm(cfg.kl.reference_path, lm, tokenizer) if cfg.kl.reference_path else None
    if reference is None and not cfg.policy.lora.enabled:
        reference = copy.deepcopy(lm)
    for model in (m for m in (lm, reference) if m is not None):
        if cfg.attention:
            model.set_attn_implementation(cfg.attention)
        if cfg.policy.disable_dropout:
            disable_dropout(model)
    if cfg.policy.lora.enabled:
        lm = apply_lora(lm, cfg.policy.lora)
    policy = PolicyWithValueHead(lm, with_value_head)
    return policy, Reference(policy, reference), tokenizer


def load_reference_lm(path: str, policy_lm, tokenizer):
    """The reference model of `kl.reference_path`, checked to share the policy's vocabulary: the
    KL compares the two models' next-token distributions token by token."""
    reference_tokenizer = load_tokenizer(path)
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab() or \
            reference_tokenizer.eos_token_id != tokenizer.eos_token_id:
        raise ValueError(f"kl.reference_path {path}: its tokenizer differs from the policy's (policy.path); "
                         "the reference must read and predict the policy's tokens")
    reference = load_causal_lm(path)
    ref_vocab = reference.get_output_embeddings().weight.shape[0]
    policy_vocab = policy_lm.get_output_embeddings().weight.shape[0]
    if ref_vocab != policy_vocab:
        raise ValueError(f"kl.reference_path {path}: {ref_vocab} output logits, the policy has {policy_vocab}")
    return reference


def build_rollout_engine(cfg: PPOConfig, lm, tokenizer, accelerator) -> RolloutEngine:
    """The sampler of `rollout.engine`: `generate` on the policy's LM, or a vLLM engine loaded from
    `policy.path` on this process's GPU (one process only: see `rollout.vllm_engine`)."""
    r = cfg.rollout
    sampling = SamplingSettings(pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                                max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                top_k=r.top_k)
    if r.engine == "hf":
        return HFEngine(lm, sampling, accelerator.autocast)
    if accelerator.num_processes > 1:
        raise ValueError(f"rollout.engine=vllm runs in one process (found {accelerator.num_processes}): launch "
                         "without several processes, or use rollout.engine=hf")
    from rlhfkit.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(resolve_model_path(cfg.policy.path), sampling,
                      gpu_memory_utilization=r.vllm.gpu_memory_utilization, dtype=r.vllm.dtype,
                      enforce_eager=r.vllm.enforce_eager, max_model_len=cfg.data.max_prompt_tokens + r.max_new_tokens,
                      seed=cfg.run.seed, device=accelerator.device)


def load_reward_models(paths: Sequence[str]):
    """The reward models in `paths`, in eval mode with dropout off (c14)."""
    from rlhfkit.models.reward import load_reward_model

    models = []
    for path in paths:
        model = load_reward_model(path)
        disable_dropout(model.backbone)
        model.eval()
        models.append(model)
    return models


def build_critic(cfg: PPOConfig, reward_models, tokenizer) -> Critic:
    """The separate critic, initialised from the first RM or from the SFT model's trunk."""
    critic = critic_from_reward_model(reward_models[0], tokenizer) if cfg.value.init == "rm" else \
        critic_from_pretrained(cfg.policy.path)
    if cfg.attention:
        critic.trunk.set_attn_implementation(cfg.attention)
    disable_dropout(critic.trunk)
    return critic


ScoreFn = Callable[[list, list[str], list[bool]], dict[str, torch.Tensor]]
"""(prompts, responses, finished) → {"score": (B,) the training score, optional "raw": (B,)}."""


def _rm_scorer(models, cfg: RewardConfig) -> ScoreFn:
    from rlhfkit.models.reward import RewardEnsemble

    ensemble = RewardEnsemble(models, mode=cfg.ensemble, uncertainty_coef=cfg.ensemble_coef)
    gain = torch.cat([m.norm_gain.detach().cpu() for m in models]).unsqueeze(-1)
    bias = torch.cat([m.norm_bias.detach().cpu() for m in models]).unsqueeze(-1)

    def score(prompts, responses, finished):
        raw = ensemble.score_all(prompts, responses, finished, normalized=False, batch_size=cfg.batch_size)
        combined = ensemble.combine(raw * gain + bias if cfg.normalized else raw)
        return {"score": combined.float(), "raw": raw.float().mean(0)}

    return score


def _callable_scorer(spec: str) -> ScoreFn:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward.callable must be 'module:function', got {spec!r}")
    fn = getattr(importlib.import_module(module_name), attr)

    def score(prompts, responses, finished):
        out = torch.as_tensor(fn(list(prompts), list(responses), list(finished)), dtype=torch.float32)
        if out.shape != (len(prompts),):
            raise ValueError(f"reward callable {spec} returned shape {tuple(out.shape)}, expected ({len(prompts)},)")
        return {"score": out}

    return score


def build_scorer(cfg: RewardConfig, task, reward_models) -> ScoreFn:
    """The reward source as one function of text (the RM may use a different tokenizer)."""
    if cfg.source == "rm":
        return _rm_scorer(reward_models, cfg)
    if cfg.source == "callable":
        return _callable_scorer(cfg.callable)
    if task is None:
        raise ValueError("reward.source=gold needs a built-in task (data.task)")
    return lambda prompts, responses, finished: {
        "score": torch.tensor(task.gold_rewards(prompts, responses, finished), dtype=torch.float32)}


def load_ptx_examples(cfg: PPOConfig, task, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of the SFT demonstrations for PPO-ptx, from `ptx.data_path` or
    the task; empty when off."""
    ptx = cfg.ptx
    if ptx.coef == 0:
        return []
    if ptx.data_path:
        from rlhfkit.data import SkipReport, read_records
        from rlhfkit.train.sft import tokenize_sft

        records, _ = read_records(ptx.data_path, kind="sft", on_error="raise")
        examples = tokenize_sft(records[: ptx.n_examples], tokenizer, ptx.max_seq_len, "raise", ptx.data_path,
                                SkipReport())
        return [(ex.prompt_ids, ex.response_ids) for ex in examples]
    if task is None:
        raise ValueError("ptx.coef > 0 needs ptx.data_path or a built-in task for its SFT demonstrations")
    return [(encode_prompt(tokenizer, ex.prompt), encode_response(tokenizer, ex.response))
            for ex in task.sft_examples(ptx.n_examples, split="train")]
