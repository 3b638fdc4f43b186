"""Supervised fine-tuning: causal-LM loss on response tokens only, on Accelerate.

`train_sft(config)` is the Python API; `rlhfkit sft CONFIG key=value …` calls it. The loss of one
optimiser step is the mean NLL over every response token of the *global* batch, whatever the
split into processes and micro-batches (so 1×8 = 8×1 and 2 processes = 1).
"""

from __future__ import annotations

import math
import statistics
from contextlib import nullcontext
from collections import Counter
from dataclasses import dataclass

import torch

from rlhfkit.config.base import config_to_dict
from rlhfkit.config.sft import SFTConfig
from rlhfkit.data.collate import right_pad
from rlhfkit.data.errors import SkipReport
from rlhfkit.data.lengths import check_token_lengths
from rlhfkit.models.loading import load_or_build_policy, save_hf
from rlhfkit.models.text import encode_prompt, encode_response
from rlhfkit.rollout.sampling import sample_responses
from rlhfkit.rundir import Progress, RunDir, print_effective_config, seed_everything
from rlhfkit.train.common import BatchPlan, build_optimizer, build_scheduler, global_batch_indices, make_accelerator
from rlhfkit.train.run import checkpoint_to_resume, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class TokenizedExample:
    prompt_ids: list[int]
    response_ids: list[int]


def sft_batch(examples: list[TokenizedExample], pad_id: int):
    """(ids, attention_mask, loss_mask), (B, T) right-padded; loss_mask marks response tokens."""
    ids, mask = right_pad([e.prompt_ids + e.response_ids for e in examples], pad_id)
    loss_rows = [[0] * len(e.prompt_ids) + [1] * len(e.response_ids) for e in examples]
    loss_mask, _ = right_pad(loss_rows, 0, width=ids.shape[1])
    return ids, mask, loss_mask.bool()


def response_nll_sum(model, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Σ −log p(token | prefix) over the tokens where loss_mask is True (a scalar). The log-softmax
    runs on those positions only: (N, V) rather than (B, T, V), the prompts' logits dropped first."""
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
    counts = loss_mask[:, 1:]
    return torch.nn.functional.cross_entropy(logits[counts].float(), ids[:, 1:][counts], reduction="sum")


HELD_OUT_LOGITS_BUDGET = 2**26
"""Logits (B × T × V values) one held-out batch may produce: 256 MiB in fp32. A 49k vocabulary at
192 tokens allows 7 rows; 64 rows took 4.4 GB of RSS for SmolLM2."""


def _budget_batches(examples: list[TokenizedExample], max_rows: int, vocab: int) -> list[list[TokenizedExample]]:
    """Consecutive batches of at most `max_rows` rows whose padded logits fit the budget."""
    batches, batch, width = [], [], 0
    for e in examples:
        length = len(e.prompt_ids) + len(e.response_ids)
        wider = max(width, length)
        if batch and (len(batch) == max_rows or (len(batch) + 1) * wider * vocab > HELD_OUT_LOGITS_BUDGET):
            batches.append(batch)
            batch, wider = [], length
        batch.append(e)
        width = wider
    return batches + ([batch] if batch else [])


def unigram_cross_entropy(train: list[TokenizedExample], held_out: list[TokenizedExample], vocab_size: int) -> float:
    """Per-token cross-entropy (nats) of held-out responses under the add-one-smoothed unigram
    distribution of training responses: the baseline SFT must beat."""
    counts = Counter(t for e in train for t in e.response_ids)
    total = sum(counts.values()) + vocab_size
    tokens = [t for e in held_out for t in e.response_ids]
    if not tokens:
        raise ValueError("no held-out SFT examples are left (all skipped?): the unigram baseline needs some")
    return -sum(math.log((counts[t] + 1) / total) for t in tokens) / len(tokens)


@torch.no_grad()
def held_out_loss(model, examples: list[TokenizedExample], pad_id: int, batch_size: int = 64) -> float:
    """Mean response-token NLL (nats) over `examples`, in batches of at most `batch_size` rows
    and `HELD_OUT_LOGITS_BUDGET` logits."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _budget_batches(examples, batch_size, model.get_output_embeddings().out_features):
        ids, mask, loss_mask = (t.to(device) for t in sft_batch(batch, pad_id))
        total += float(response_nll_sum(model, ids, mask, loss_mask))
        count += int(loss_mask[:, 1:].sum())
    model.train(was_training)
    return total / count


def tokenize_sft(records, tokenizer, max_seq_len: int, on_error: str, source: str, skips: SkipReport):
    """Tokenise SFT records; a too-long one raises a `DataError` naming `source:N` and the field,
    or is counted in `skips` under `too_long`."""
    def count(prompt, response):
        return len(encode_prompt(tokenizer, prompt)) + (len(encode_response(tokenizer, response)) if response else 0)

    kept, _ = check_token_lengths(records, count, max_seq_len, source=source, on_error=on_error, skips=skips)
    return [TokenizedExample(encode_prompt(tokenizer, r.prompt), encode_response(tokenizer, r.response)) for r in kept]


def load_sft_records(cfg: SFTConfig):
    """(train records, held-out records, task or None, source name, skipped-record report)."""
    from rlhfkit.data import read_records
    from rlhfkit.tasks import get_task

    data = cfg.data
    # A data file replaces the task entirely: its text trains a tiny model's tokenizer, and no
    # gold reward is sampled on the task's prompts.
    task = get_task(data.task, seed=data.task_seed) if data.task and not data.train_path else None
    if data.train_path:
        train, skips = read_records(data.train_path, kind="sft", on_error=data.on_error)
        if data.eval_path:
            held, held_skips = read_records(data.eval_path, kind="sft", on_error=data.on_error)
            skips.merge(held_skips)
        else:
            cut = max(1, int(len(train) * data.eval_fraction))
            train, held = train[cut:], train[:cut]
        return train[: data.n_train], held[: data.n_eval], task, data.train_path, skips
    if task is None:
        raise ValueError("SFT needs data.task or data.train_path")
    train = task.sft_examples(data.n_train, split="train")
    held = task.sft_examples(data.n_eval, split="eval")
    return train, held, task, f"task:{task.name}", SkipReport()


def gold_of_samples(model, tokenizer, task, prompts, cfg: SFTConfig):
    """Mean gold reward of one sampled response per held-out prompt, and the samples themselves."""
    samples = sample_responses(model, tokenizer, [p.prompt for p in prompts],
                               max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.temperature)
    golds = task.gold_rewards([p.prompt for p in prompts], [s.text for s in samples], [s.finished for s in samples])
    return statistics.fmean(golds), [
        {"prompt": s.prompt, "response": s.text, "finished": s.finished, "gold": g} for s, g in zip(samples, golds)
    ]


def train_sft(cfg: SFTConfig) -> dict:
    """Run SFT end to end into `cfg.run.out_dir`; return the summary."""
    accelerator = make_accelerator(cfg.run)
    seed_everything(cfg.run.seed)
    train_recs, held_recs, task, source, skips = load_sft_records(cfg)
    corpus = task.corpus if task else (lambda n: [f"{r.prompt} {r.response}" for r in train_recs[:n]])
    model, tokenizer = load_or_build_policy(cfg.model, corpus, cfg.run.seed)
    train = tokenize_sft(train_recs, tokenizer, cfg.data.max_seq_len, cfg.data.on_error, source, skips)
    held = tokenize_sft(held_recs, tokenizer, cfg.data.max_seq_len, cfg.data.on_error, source + "(eval)", skips)

    plan = BatchPlan.make(cfg.batch_size, cfg.micro_batch_size, accelerator.num_processes)
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * (len(train) // cfg.batch_size)))
    derived = {"grad_accum_steps": plan.grad_accum_steps, "effective_batch_size": cfg.batch_size,
               "num_processes": plan.num_processes, "optimizer_steps": total_steps, "train_examples": len(train),
               "eval_examples": len(held), "skipped": skips.as_dict()}
    run = RunDir(cfg.run.out_dir, is_main=accelerator.is_main_process)
    run.save_config(config_to_dict(cfg), derived)
    print_effective_config("sft", config_to_dict(cfg), derived, accelerator.is_main_process)

    optimizer = build_optimizer(model.named_parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    eval_prompts = task.prompts("eval", cfg.eval.n_sample_prompts) if task and cfg.eval.n_sample_prompts else []

    state = {"step": 0}
    checkpoint = checkpoint_to_resume(run, cfg.run.resume)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        run.truncate_metrics(state["step"])
    else:
        state["unigram_loss"] = unigram_cross_entropy(train, held, len(tokenizer))
        state["eval_loss_before"] = held_out_loss(accelerator.unwrap_model(model), held, tokenizer.pad_token_id)
        if eval_prompts:
            state["gold_reward_before"], _ = gold_of_samples(accelerator.unwrap_model(model), tokenizer, task,
                                                             eval_prompts, cfg)

    model.train()
    steps_this_run = 0
    with Progress(total_steps, "sft", cfg.run.progress and accelerator.is_main_process, state["step"]) as bar:
        while state["step"] < total_steps:
            loss = sft_step(model, optimizer, scheduler, accelerator, train, plan, cfg, state["step"],
                            tokenizer.pad_token_id)
            state["step"] += 1
            steps_this_run += 1
            step = state["step"]
            metrics = {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]}
            if step % cfg.run.eval_every == 0 or step == total_steps:
                metrics.update(evaluate_sft(accelerator.unwrap_model(model), tokenizer, task, held, eval_prompts,
                                            cfg, run, step))
            if step % cfg.run.log_every == 0 or "eval/loss" in metrics:
                run.log(step, metrics)
            bar.update(1, loss=loss)
            if step % cfg.run.save_every == 0 or step == total_steps:
                save_checkpoint(accelerator, run, step, state, cfg.run.keep_checkpoints)
            if cfg.run.stop_after_steps and steps_this_run >= cfg.run.stop_after_steps and step < total_steps:
                run.close()
                return {"stopped_at_step": step}

    final = accelerator.unwrap_model(model)
    summary = {"steps": total_steps, "unigram_loss": state["unigram_loss"],
               "eval_loss_before": state["eval_loss_before"], "eval_loss": held_out_loss(final, held,
                                                                                         tokenizer.pad_token_id)}
    summary["eval_perplexity"] = math.exp(summary["eval_loss"])
    if eval_prompts:
        summary["gold_reward_before"] = state["gold_reward_before"]
        summary["gold_reward_after"], _ = gold_of_samples(final, tokenizer, task, eval_prompts, cfg)
    summary["skipped"] = skips.as_dict()
    if accelerator.is_main_process:
        save_hf(final, tokenizer, run.model_dir)
        summary["model"] = str(run.model_dir)
    run.write_summary(summary)
    run.close()
    accelerator.wait_for_everyone()
    return summary


def sft_step(model, optimizer, scheduler, accelerator, data, plan: BatchPlan, cfg: SFTConfig, step: int,
             pad_id: int) -> float:
    """One optimiser step over global batch `step`; returns its mean token loss (this process's
    share, scaled to the global token count, summed across processes)."""
    indices = global_batch_indices(len(data), cfg.batch_size, cfg.run.seed, step)
    global_tokens = sum(len(data[i].response_ids) for i in indices)
    micro_batches = plan.micro_batches(indices, accelerator.process_index)
    total = torch.zeros((), device=accelerator.device)
    for k, micro in enumerate(micro_batches):
        ids, mask, loss_mask = (t.to(accelerator.device) for t in sft_batch([data[i] for i in micro], pad_id))
        # DDP averages gradients over processes, so each process scales by num_processes / global tokens.
        scale = plan.num_processes / global_tokens
        sync = k == len(micro_batches) - 1
        with accelerator.autocast(), (nullcontext() if sync else accelerator.no_sync(model)):
            loss = response_nll_sum(model, ids, mask, loss_mask) * scale
            accelerator.backward(loss)
        total += loss.detach() / plan.num_processes
    if cfg.optim.max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(total, reduction="sum"))


def evaluate_sft(model, tokenizer, task, held, eval_prompts, cfg: SFTConfig, run: RunDir, step: int) -> dict:
    metrics = {"eval/loss": held_out_loss(model, held, tokenizer.pad_token_id)}
    metrics["eval/perplexity"] = math.exp(metrics["eval/loss"])
    if eval_prompts:
        metrics["reward/gold"], samples = gold_of_samples(model, tokenizer, task, eval_prompts, cfg)
        run.log_samples(step, samples[: cfg.eval.n_logged_samples])
    return metrics

