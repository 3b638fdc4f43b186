"""Candidate sampling for preference collection: K responses per prompt from model variants.

`sample_candidates(config)` is the Python API; `rlhfkit sample CONFIG key=value …` calls it. Each
variant (a model directory plus temperature, top-p, seed and a count) contributes its responses to
every prompt; sampling from the current policy family — SFT at several temperatures, earlier RL
checkpoints — keeps the labels on-distribution for the reward model (rlhf-details a8). Every
candidate carries its provenance. Identical texts are kept once (the first variant to produce one
keeps it) and counted; empty responses, and truncated ones on request (a9), are dropped and
counted by reason. The output is a `CandidateSet` JSONL, the input of `rlhfkit label-auto` and of
the annotation app, beside a run directory with `config.yaml` and `summary.json`.

Reproducibility: batch b of variant v is sampled after `torch.manual_seed(batch_seed(v.seed, name, b))`,
so a variant's samples depend only on its own settings, the prompts and the batch size; two
variants with the same seed (one model at two temperatures) still draw independent streams.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.config.base import config_to_dict
from rlhfkit.config.sample import ModelVariant, OutputRunConfig, PromptSourceConfig, SampleConfig
from rlhfkit.data.errors import SkipReport
from rlhfkit.data.schemas import Candidate, CandidateSet, PromptRecord, Provenance
from rlhfkit.models.text import plain_prompt_text

@dataclass
class Draw:
    """One sampled response before de-duplication and filtering."""

    text: str
    finished: bool
    num_tokens: int
    provenance: Provenance


@dataclass
class VariantStats:
    """Per-variant tallies for the summary."""

    sampled: int = 0
    kept: int = 0
    duplicates: int = 0
    filtered: Counter = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)
    finished: int = 0
    gold: list[float] = field(default_factory=list)

    def add(self, draw: Draw, gold: float | None) -> None:
        """Tally one draw (before de-duplication and filtering)."""
        self.sampled += 1
        self.finished += draw.finished
        self.tokens.append(draw.num_tokens)
        if gold is not None:
            self.gold.append(gold)

    def as_dict(self) -> dict:
        out = {"sampled": self.sampled, "kept": self.kept, "duplicates": self.duplicates,
               "filtered": dict(self.filtered), "finished_share": self.finished / max(self.sampled, 1),
               "mean_tokens": statistics.fmean(self.tokens) if self.tokens else 0.0}
        if self.gold:
            out["gold_mean"] = statistics.fmean(self.gold)
        return out


def batch_seed(seed: int, variant: str, batch_index: int) -> int:
    """The torch seed of one generation batch: 63 bits of SHA-256 of "seed:variant:batch"."""
    digest = hashlib.sha256(f"{seed}:{variant}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def prompt_key(prompt) -> str:
    """A stable id for a prompt without one: the first 16 hex digits of SHA-256 of its JSON."""
    data = prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]
    return "p-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_prompts(cfg: PromptSourceConfig, task) -> tuple[list[PromptRecord], SkipReport, str]:
    """(prompts, skips, source name): the first `cfg.n` records of the file, or of the task split."""
    if cfg.path:
        from rlhfkit.data.io import read_records

        records, skips = read_records(cfg.path, kind="prompt", on_error=cfg.on_error, limit=cfg.n)
        return list(records), skips, cfg.path
    if task is None:
        raise ValueError("sampling needs prompts.path or prompts.task")
    return task.prompts(cfg.split, cfg.n), SkipReport(), f"task:{task.name}:{cfg.split}"


def check_gold_prompts(prompts: list[PromptRecord], task, source: str) -> None:
    """Raise on the first prompt the task's gold reward cannot score, before any sampling: the
    gold is computed after it, so a prompt file of other prompts would waste the whole run."""
    for n, record in enumerate(prompts, start=1):
        try:
            task.gold_reward(plain_prompt_text(record.prompt), "", False)  # any response will do
        except ValueError as exc:
            named = f" (id {record.id!r})" if record.id else ""
            raise ValueError(f"{source}: prompt record {n}{named}: {exc}; gold rewards need {task.name!r} "
                             "prompts (drop gold_scores, or use the task's prompts)") from None


def resolve_device(run: OutputRunConfig) -> torch.device:
    if run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(run.device)


def variant_provenance(variant: ModelVariant, max_new_tokens: int) -> Provenance:
    """What every candidate of this variant records about where it came from."""
    return Provenance(model=variant.name or variant.path, checkpoint=variant.checkpoint or variant.path,
                      temperature=variant.temperature, top_p=variant.top_p, top_k=variant.top_k,
                      seed=variant.seed, max_new_tokens=max_new_tokens, path=variant.path)


def sample_variant(model, tokenizer, prompts: list[PromptRecord], variant: ModelVariant, max_new_tokens: int,
                   batch_size: int, on_batch) -> list[list[Draw]]:
    """`variant.samples_per_prompt` draws for every prompt, in prompt order; `on_batch()` is called
    after each generation batch (progress)."""
    from rlhfkit.rollout.sampling import sample_responses

    k = variant.samples_per_prompt
    expanded = [(i, j) for i in range(len(prompts)) for j in range(k)]
    draws: list[list[Draw]] = [[] for _ in prompts]
    base = variant_provenance(variant, max_new_tokens)
    for b, start in enumerate(range(0, len(expanded), batch_size)):
        chunk = expanded[start : start + batch_size]
        torch.manual_seed(batch_seed(variant.seed, base.model, b))
        samples = sample_responses(model, tokenizer, [prompts[i].prompt for i, _ in chunk],
                                   max_new_tokens=max_new_tokens, temperature=variant.temperature,
                                   top_p=variant.top_p, top_k=variant.top_k, batch_size=len(chunk))
        for (i, j), s in zip(chunk, samples):
            prov = base.model_copy(update={"sample_index": j, "num_tokens": s.num_tokens})
            draws[i].append(Draw(s.text, s.finished, s.num_tokens, prov))
        on_batch()
    return draws


def build_set(record: PromptRecord, draws: list[Draw], cfg: SampleConfig,
              stats: dict[str, VariantStats], gold: list[float] | None) -> tuple[CandidateSet | None, Counter]:
    """De-duplicate and filter one prompt's draws (variant order) into a candidate set; returns
    (set or None when fewer than `min_candidates` remain, counts of what was left out)."""
    counts: Counter = Counter()
    kept: list[Candidate] = []
    kept_gold: list[float] = []
    seen: set[str] = set()
    for n, draw in enumerate(draws):
        tally = stats[draw.provenance.model]
        reason = ("empty" if not draw.text.strip() else "unfinished" if cfg.drop_unfinished and not draw.finished
                  else "duplicate" if draw.text in seen else None)
        if reason is None:
            seen.add(draw.text)
            kept.append(Candidate(text=draw.text, finished=draw.finished, provenance=draw.provenance))
            if gold is not None:
                kept_gold.append(gold[n])
            continue
        counts[reason] += 1
        if reason == "duplicate":
            tally.duplicates += 1
        else:
            tally.filtered[reason] += 1
    if len(kept) < cfg.min_candidates:
        counts["too_few_candidates"] += 1
        return None, counts
    for c in kept:
        stats[c.provenance.model].kept += 1
    meta = {**record.meta, "n_sampled": len(draws), "n_duplicates": counts["duplicate"],
            "n_filtered": {r: counts[r] for r in ("empty", "unfinished") if counts[r]}}
    if cfg.gold_scores:
        meta["gold"] = kept_gold
    return CandidateSet(prompt_id=record.id or prompt_key(record.prompt), prompt=record.prompt, candidates=kept,
                        meta=meta), counts


def load_model(path: str, device: torch.device, run: OutputRunConfig):
    """(model, tokenizer) of one variant, in eval mode on `device`."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    dtype = torch.bfloat16 if run.precision == "bf16" else torch.float32
    model = load_causal_lm(path, dtype=dtype).to(device)
    return model.eval(), load_tokenizer(path)


def sample_all(cfg: SampleConfig, prompts: list[PromptRecord], device: torch.device, bar) -> list[list[Draw]]:
    """Every variant's draws for every prompt, in variant order; a model used by consecutive
    variants is loaded once."""
    draws: list[list[Draw]] = [[] for _ in prompts]
    path, model, tokenizer = None, None, None
    for variant in cfg.variants:
        if variant.path != path:
            model = tokenizer = None  # release the previous model before loading the next one
            model, tokenizer = load_model(variant.path, device, cfg.run)
            path = variant.path
        per_prompt = sample_variant(model, tokenizer, prompts, variant, cfg.max_new_tokens, cfg.batch_size,
                                    lambda: bar.update(1))
        for mine, new in zip(draws, per_prompt):
            mine.extend(new)
    return draws


def assemble_sets(cfg: SampleConfig, prompts: list[PromptRecord], draws: list[list[Draw]], task
                  ) -> tuple[list[CandidateSet], dict[str, VariantStats], Counter]:
    """(candidate sets, per-variant stats, counts of what was left out); gold rewards are tallied
    when `task` is given."""
    stats = {v.name or v.path: VariantStats() for v in cfg.variants}
    sets, left_out = [], Counter()
    for record, mine in zip(prompts, draws):
        gold = None
        if task is not None:
            text = plain_prompt_text(record.prompt)
            gold = task.gold_rewards([text] * len(mine), [d.text for d in mine], [d.finished for d in mine])
        for n, d in enumerate(mine):
            stats[d.provenance.model].add(d, None if gold is None else gold[n])
        candidate_set, counts = build_set(record, mine, cfg, stats, gold)
        left_out += counts
        if candidate_set is not None:
            sets.append(candidate_set)
    return sets, stats, left_out


def sample_candidates(cfg: SampleConfig) -> dict:
    """Sample, de-duplicate and filter candidates for every prompt; write the candidate sets and the
    run directory; return the summary."""
    from rlhfkit.data.io import write_records
    from rlhfkit.rundir import Progress, RunDir, print_effective_config
    from rlhfkit.tasks import get_task

    started = time.perf_counter()
    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    task = get_task(cfg.prompts.task, seed=cfg.prompts.task_seed) if cfg.prompts.task else None
    prompts, skips, source = load_prompts(cfg.prompts, task)
    if not prompts:
        raise ValueError(f"{source}: no prompts to sample for")
    # Gold only for the task's own prompts (or when asked): a prompt file may hold other prompts.
    gold_task = task if task is not None and (cfg.gold_scores or not cfg.prompts.path) else None
    if gold_task is not None:
        check_gold_prompts(prompts, gold_task, source)
    device = resolve_device(cfg.run)
    output = Path(cfg.output) if cfg.output else Path(cfg.run.out_dir) / "candidates.jsonl"
    batches = sum(-(-len(prompts) * v.samples_per_prompt // cfg.batch_size) for v in cfg.variants)
    derived = {"k": sum(v.samples_per_prompt for v in cfg.variants), "prompts": len(prompts),
               "prompt_source": source, "device": str(device), "generate_batches": batches, "output": str(output)}
    run = RunDir(cfg.run.out_dir, tensorboard=False)
    run.save_config(config_to_dict(cfg), derived)
    print_effective_config("sample", config_to_dict(cfg), derived, cfg.run.progress)

    # Seeding per batch would otherwise leave the caller's global RNG in a state set by us.
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), Progress(batches, "sample", cfg.run.progress) as bar:
        draws = sample_all(cfg, prompts, device, bar)
    sets, stats, left_out = assemble_sets(cfg, prompts, draws, gold_task)
    write_records(output, sets, kind="candidates")

    summary = {"prompts": len(prompts), "k": derived["k"], "candidate_sets": len(sets),
               "candidates_sampled": sum(len(d) for d in draws),
               "candidates_kept": sum(len(s.candidates) for s in sets), "duplicates": left_out["duplicate"],
               "filtered": {r: left_out[r] for r in ("empty", "unfinished")},
               "sets_dropped": {"too_few_candidates": left_out["too_few_candidates"]},
               "prompt_file_skipped": skips.as_dict(), "variants": {n: t.as_dict() for n, t in stats.items()},
               "output": str(output), "seconds": round(time.perf_counter() - started, 3)}
    run.write_summary(summary)
    run.close()
    return summary
