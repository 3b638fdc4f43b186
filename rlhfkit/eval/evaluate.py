"""`rlhfkit eval`: compare models on held-out prompts.

For every decoding (greedy and/or sampled at a stated temperature) and every model — a model
directory (SFT, PPO checkpoints) or a best-of-n sampler over one — the stage samples one response
per prompt and reports:

* reward-model score (each head) and the task's gold reward when the prompts come from the task;
* KL to the reference, Σ_t [log π(y_t) − log π_ref(y_t)] over the sampled response tokens, both
  log-probs taken from logits ÷ T (rlhf-details c3, c5); sampled decodings only, since greedy
  responses are not draws from π. Best-of-n samplers report the analytic log n − (n−1)/n;
* response length (tokens, words), EOS fraction, distinct-n;
* the win rate against the baseline by a judge, every comparison asked in both orders (ties ½),
  with its interval, and the win rate at matched length; Bradley–Terry scores over all pairs
  when there are more than two models;
* held-out perplexity on SFT data (forgetting), once per model.

The run directory holds `config.yaml`, `summary.json` and `samples.jsonl` (one row per decoding
and prompt with every model's response side by side). With `run.progress`, one bar counts the
sequences generated, scored and judged, and the held-out demonstrations, naming the work under way.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from rlhfkit.config.base import config_to_dict
from rlhfkit.config.eval import DecodingSpec, EvalConfig, EvalJudgeConfig, EvalModelSpec
from rlhfkit.eval.judges import (CallableJudge, GoldJudge, RewardModelJudge, judge_both_orders, load_callable,
                                 preference_from_scores)
from rlhfkit.eval.stats import bradley_terry, distinct_n, length_matched_win_rate, win_rate
from rlhfkit.models.text import decode_response, encode_prompt, plain_prompt_text

if TYPE_CHECKING:
    from rlhfkit.rundir import Progress

BT_RIDGE = 0.01
"""L2 penalty of the Bradley–Terry fit (a N(0, 100) prior on log-strengths): keeps the scores
finite when one model wins every comparison, and barely moves them otherwise."""


@dataclass
class Responses:
    """One model's responses to the prompts under one decoding, aligned with the prompts."""

    texts: list[str]
    finished: list[bool]
    num_tokens: list[int]
    """Response tokens, EOS included."""
    kl: list[float] | None = None
    """Sequence KL to the reference per response (nats), when measured."""


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory: `path` itself, or `path/model` when `path` is a run directory."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").is_file() else path


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one (model, decoding) stream that depends only on its own names."""
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode())


def response_logprobs(lm, rollout, temperature: float) -> torch.Tensor:
    """log π(y_t)/T of the rollout's response tokens under `lm` (B, R), 0 where masked; the same
    training forward pass (left-padded prompt, position ids over real tokens) as PPO uses."""
    from rlhfkit.algos.logprobs import logprobs_from_logits
    from rlhfkit.models.policy import PolicyWithValueHead

    ids, mask = rollout.sequences()
    n_response = rollout.response_ids.shape[1]
    logits = PolicyWithValueHead(lm, with_value_head=False)(ids, mask, n_response).logits
    logprobs = logprobs_from_logits(logits, rollout.response_ids, temperature)
    return logprobs.masked_fill(~rollout.response_mask, 0.0)


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: Sequence, decoding: DecodingSpec, max_new_tokens: int,
                       batch_size: int, reference=None, on_batch: Callable[[int], None] | None = None) -> Responses:
    """One response per prompt; with a `reference` (sharing the tokenizer) and sampled decoding,
    also the per-response KL Σ_t [log π − log π_ref] (k1 summed over the response, nats).
    `on_batch(n)` is called after each batch of n prompts (progress)."""
    from rlhfkit.rollout.generate import generate

    model.eval()
    out = Responses([], [], [], [] if reference is not None and not decoding.greedy else None)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rollout = generate(model, [encode_prompt(tokenizer, p) for p in chunk], pad_id=tokenizer.pad_token_id,
                           eos_id=tokenizer.eos_token_id, max_new_tokens=max_new_tokens,
                           temperature=decoding.temperature, greedy=decoding.greedy)
        lengths = rollout.response_mask.sum(1).tolist()
        for ids, n in zip(rollout.response_ids.tolist(), lengths):
            text, finished = decode_response(tokenizer, ids[:n])
            out.texts.append(text)
            out.finished.append(finished)
            out.num_tokens.append(int(n))
        if out.kl is not None:
            # Both log-probs from the same forward pass (not the sampler's), so a model compared
            # with an identical reference gets exactly 0.
            diff = (response_logprobs(model, rollout, decoding.temperature)
                    - response_logprobs(reference, rollout, decoding.temperature))
            out.kl.extend(diff.sum(1).tolist())
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def best_of_n_responses(model, tokenizer, prompts: Sequence, n: int, scorer, decoding: DecodingSpec,
                        max_new_tokens: int, batch_size: int,
                        on_batch: Callable[[int], None] | None = None) -> Responses:
    """Best-of-n sampling: n responses per prompt, keep the one `scorer(prompts, texts, finished)`
    (→ one float each) ranks highest (the first on ties); `on_batch(k)` after each batch of k samples."""
    repeated = [p for p in prompts for _ in range(n)]
    pool = generate_responses(model, tokenizer, repeated, decoding, max_new_tokens, batch_size,
                              on_batch=on_batch)
    scores = np.asarray(scorer(repeated, pool.texts, pool.finished), dtype=float).reshape(len(prompts), n)
    picks = [i * n + int(j) for i, j in enumerate(scores.argmax(1))]
    return Responses([pool.texts[i] for i in picks], [pool.finished[i] for i in picks],
                     [pool.num_tokens[i] for i in picks])


def response_metrics(prompts: Sequence, resp: Responses, rm, task, distinct: Sequence[int],
                     batch_size: int) -> tuple[dict, dict]:
    """(means, per-response scores) of one model's responses: RM heads, gold, KL, length, EOS,
    distinct-n; the RM scores `batch_size` responses per forward call."""
    per: dict[str, list] = {}
    metrics: dict[str, Any] = {"n": len(resp.texts)}
    if rm is not None:
        per["rm"] = rm.score_texts(list(prompts), resp.texts, resp.finished, batch_size=batch_size).tolist()
        heads = np.asarray(per["rm"], dtype=float)
        metrics["rm"] = heads.mean(0).tolist()
        metrics["rm_std"] = heads.std(0).tolist()
    if task is not None:
        per["gold"] = task.gold_rewards([plain_prompt_text(p) for p in prompts], resp.texts, resp.finished)
        metrics["gold"], metrics["gold_std"] = statistics.fmean(per["gold"]), float(np.std(per["gold"]))
    if resp.kl is not None:
        per["kl"] = resp.kl
        metrics["kl"], metrics["kl_std"] = statistics.fmean(resp.kl), float(np.std(resp.kl))
        metrics["kl_method"] = "sampled"
    metrics["length_tokens"] = statistics.fmean(resp.num_tokens)
    metrics["length_words"] = statistics.fmean(len(t.split()) for t in resp.texts)
    metrics["eos_fraction"] = statistics.fmean(float(f) for f in resp.finished)
    for k in distinct:
        metrics[f"distinct_{k}"] = distinct_n(resp.texts, k)
    return metrics, per


class ScoredJudge:
    """A scoring judge with every response scored once up front (one batched call), so pairwise
    verdicts are table look-ups; verdicts equal `judge.prefer`'s."""

    def __init__(self, judge, items: list[tuple[Any, str, bool]]) -> None:
        self.judge, self.name = judge, judge.name
        keys = [self._key(p, r, f) for p, r, f in items]
        unique = list(dict.fromkeys(keys))
        first = {k: items[keys.index(k)] for k in unique}
        self._scores = dict(zip(unique, judge.scores([first[k] for k in unique])))

    @staticmethod
    def _key(prompt: Any, response: str, finished: bool) -> tuple[str, str, bool]:
        return json.dumps(prompt, sort_keys=True, default=str), response, bool(finished)

    def prefer(self, prompt: Any, a: str, b: str, finished_a: bool = True, finished_b: bool = True) -> float:
        s_a, s_b = self._scores[self._key(prompt, a, finished_a)], self._scores[self._key(prompt, b, finished_b)]
        return preference_from_scores(s_a, s_b, self.judge.temperature, self.judge.tie_eps)


def comparison_scores(judge, prompts: Sequence, a: Responses, b: Responses) -> list[float]:
    """Per-prompt score of A against B, judged in both orders (`judge_both_orders`): 1 win, ½ tie, 0 loss."""
    return [judge_both_orders(judge, p, ta, tb, fa, fb)
            for p, ta, tb, fa, fb in zip(prompts, a.texts, b.texts, a.finished, b.finished)]


def compare_to_baseline(judge, prompts: Sequence, model: Responses, baseline: Responses,
                        confidence: float) -> tuple[dict, list[float]]:
    """Win rate of `model` over `baseline` with its interval, and the win rate at matched length
    (Δ = word-count difference; words are comparable across tokenizers)."""
    scores = comparison_scores(judge, prompts, model, baseline)
    delta = [len(x.split()) - len(y.split()) for x, y in zip(model.texts, baseline.texts)]
    result = win_rate(scores, confidence).to_dict()
    result["length_matched"] = length_matched_win_rate(scores, delta, confidence).to_dict()
    result["mean_length_diff_words"] = statistics.fmean(delta)
    return result, scores


def bradley_terry_scores(judge, prompts: Sequence, responses: dict[str, Responses]) -> dict[str, float]:
    """Bradley–Terry log-strengths (mean 0) from judging every pair of models on every prompt."""
    names = list(responses)
    wins = np.zeros((len(names), len(names)))
    for i, j in itertools.combinations(range(len(names)), 2):
        scores = comparison_scores(judge, prompts, responses[names[i]], responses[names[j]])
        wins[i, j], wins[j, i] = sum(scores), len(scores) - sum(scores)
    return dict(zip(names, bradley_terry(wins, l2=BT_RIDGE).tolist()))


def build_judge(cfg: EvalJudgeConfig, task, rm, rm_path: str | None, batch_size: int, device: torch.device,
                dtype: torch.dtype):
    """The configured judge; scoring judges get `scores`, pairwise ones only `prefer`. A judge
    reward model other than `rm` (at `rm_path`) is loaded in `dtype` onto `device`, like `rm`."""
    if cfg.kind == "gold":
        return GoldJudge(task, cfg.temperature, cfg.tie_eps)
    if cfg.kind == "reward_model":
        if cfg.reward_model and cfg.reward_model != rm_path:
            from rlhfkit.models.reward import load_reward_model

            rm, rm_path = load_reward_model(cfg.reward_model, dtype=dtype).to(device), cfg.reward_model
        return RewardModelJudge(rm, cfg.head, cfg.temperature, cfg.tie_eps, name=f"rm:{rm_path}",
                                batch_size=batch_size)
    obj = load_callable(cfg.callable)
    if isinstance(obj, type) and hasattr(obj, "prefer"):
        return obj()
    return CallableJudge(obj, cfg.temperature, cfg.tie_eps, name=f"fn:{cfg.callable}")


def load_eval_prompts(cfg: EvalConfig, task) -> tuple[list, str]:
    """(prompts, source description) from the task split or the prompt file."""
    src = cfg.prompts
    if src.path:
        from rlhfkit.data import read_records

        records, _ = read_records(src.path, kind="prompt", on_error=src.on_error, limit=src.n)
        return [r.prompt for r in records], src.path
    return [r.prompt for r in task.prompts(src.split, src.n)], f"task:{task.name}/{src.split}"


def held_out_perplexity(model, tokenizer, records, max_seq_len: int, batch_size: int) -> dict:
    """Mean response-token NLL and perplexity of held-out SFT demonstrations (too-long ones skipped)."""
    from rlhfkit.train.sft import held_out_loss, tokenize_sft

    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    limit = min(max_seq_len, context) if context else max_seq_len
    skips: Counter = Counter()
    examples = tokenize_sft(records, tokenizer, limit, "skip", "perplexity", skips)
    if not examples:
        return {"loss": None, "perplexity": None, "n": 0, "skipped": skips["too_long"]}
    loss = held_out_loss(model, examples, tokenizer.pad_token_id, batch_size)
    return {"loss": loss, "perplexity": math.exp(loss), "n": len(examples), "skipped": skips["too_long"]}


def _perplexity_records(cfg: EvalConfig, task) -> list:
    if cfg.perplexity.n == 0:
        return []
    if cfg.perplexity.path:
        from rlhfkit.data import read_records

        return read_records(cfg.perplexity.path, kind="sft", limit=cfg.perplexity.n)[0]
    return task.sft_examples(cfg.perplexity.n, split="eval") if task is not None else []


@dataclass
class _Context:
    """What every model's evaluation shares."""

    cfg: EvalConfig
    prompts: list
    prompt_source: str
    task: Any
    rm: Any
    reference_path: Path
    """Model directory the KL is measured against."""
    reference: Any
    reference_tokenizer: Any
    sft_records: list
    """Held-out demonstrations for the perplexity (empty = skip)."""
    device: torch.device
    dtype: torch.dtype


def _load_model(path: str | Path, ctx: _Context):
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    path = resolve_model_dir(path)
    return load_causal_lm(path, dtype=ctx.dtype).to(ctx.device).eval(), load_tokenizer(path)


def _bon_scorer(spec: EvalModelSpec, ctx: _Context):
    if spec.bon_scorer == "gold":
        return lambda ps, ts, fs: ctx.task.gold_rewards([plain_prompt_text(p) for p in ps], ts, fs)
    # Ranked by the mean over the RM's heads (one head for a plain RM).
    return lambda ps, ts, fs: ctx.rm.score_texts(list(ps), ts, fs, batch_size=ctx.cfg.batch_size).mean(1).tolist()


def _sampled_under(spec: EvalModelSpec, decoding: DecodingSpec) -> bool:
    """Whether a model entry has responses under a decoding: n greedy samples are one sample, so a
    best-of-n sampler needs a sampled decoding."""
    return spec.best_of_n == 1 or not decoding.greedy


def _progress_total(ctx: _Context) -> int:
    """Units of the progress bar, as `evaluate_model` and `summarize_decoding` advance it: sequences
    generated (n per prompt for best-of-n), held-out demonstrations, and per decoding the responses
    scored, judged against the baseline's and judged pairwise for Bradley–Terry."""
    cfg, n = ctx.cfg, len(ctx.prompts)
    total = sum(n * s.best_of_n for s in cfg.models for d in cfg.decodings if _sampled_under(s, d))
    total += len(ctx.sft_records) * sum(s.best_of_n == 1 for s in cfg.models)
    for d in cfg.decodings:
        names = [s.name for s in cfg.models if _sampled_under(s, d)]
        judged = len(names) - 1 if cfg.baseline_name in names else 0
        pairs = math.comb(len(names), 2) if cfg.all_pairs and len(names) > 2 else 0
        total += n * (len(names) + judged + pairs)
    return total


def _step(bar: Progress, **info: str) -> Callable[[int], None]:
    """`bar.update` labelled with the work about to run: the label shows now, and every advance
    keeps it (an update without labels would clear them)."""
    bar.update(0, **info)
    return partial(bar.update, **info)


def evaluate_model(spec: EvalModelSpec, ctx: _Context, bar: Progress) -> tuple[dict[str, Responses], dict]:
    """(decoding label → responses, model info incl. perplexity) of one model entry; advances `bar`
    by each sequence generated and each held-out demonstration."""
    from rlhfkit.algos.bon import best_of_n_kl

    cfg = ctx.cfg
    model, tokenizer = _load_model(spec.path, ctx)
    same_vocab = ctx.reference_tokenizer is not None and tokenizer.get_vocab() == ctx.reference_tokenizer.get_vocab()
    info: dict[str, Any] = {"path": str(resolve_model_dir(spec.path)), "best_of_n": spec.best_of_n}
    out: dict[str, Responses] = {}
    for decoding in cfg.decodings:
        if not _sampled_under(spec, decoding):
            continue
        torch.manual_seed(derive_seed(cfg.seed, spec.name, decoding.label))
        step = _step(bar, stage="generate", model=spec.name, decoding=decoding.label)
        if spec.best_of_n > 1:
            out[decoding.label] = best_of_n_responses(model, tokenizer, ctx.prompts, spec.best_of_n,
                                                      _bon_scorer(spec, ctx), decoding, cfg.max_new_tokens,
                                                      cfg.batch_size, on_batch=step)
            out[decoding.label].kl = [best_of_n_kl(spec.best_of_n)] * len(ctx.prompts)
        else:
            out[decoding.label] = generate_responses(model, tokenizer, ctx.prompts, decoding, cfg.max_new_tokens,
                                                     cfg.batch_size, ctx.reference if same_vocab else None,
                                                     on_batch=step)
    if ctx.reference is not None and not same_vocab and spec.best_of_n == 1:
        info["kl_note"] = "tokenizer differs from the reference's; KL not measured"
    if ctx.sft_records and spec.best_of_n == 1:
        step = _step(bar, stage="perplexity", model=spec.name)
        info["perplexity"] = held_out_perplexity(model, tokenizer, ctx.sft_records, cfg.perplexity.max_seq_len,
                                                 cfg.batch_size)
        step(len(ctx.sft_records))
    return out, info


def summarize_decoding(decoding: DecodingSpec, responses: dict[str, Responses], infos: dict[str, dict],
                       judge, ctx: _Context, bar: Progress) -> tuple[dict, list[dict]]:
    """(summary of one decoding, its side-by-side sample rows); advances `bar` by each response
    scored and each comparison judged."""
    cfg, prompts = ctx.cfg, ctx.prompts
    baseline = cfg.baseline_name
    models, per = {}, {}
    for name, resp in responses.items():
        step = _step(bar, stage="score", model=name, decoding=decoding.label)
        models[name], per[name] = response_metrics(prompts, resp, ctx.rm, ctx.task, cfg.distinct_n,
                                                      cfg.batch_size)
        step(len(prompts))
        if infos[name]["best_of_n"] > 1:
            models[name]["kl_method"] = "analytic_bon"
    summary: dict[str, Any] = {"greedy": decoding.greedy, "temperature": 0.0 if decoding.greedy else
                               decoding.temperature, "models": models, "win_rate": {}, "bradley_terry": None}
    judged: dict[str, list[float]] = {}
    if baseline in responses:
        for name, resp in responses.items():
            if name != baseline:
                step = _step(bar, stage="judge", model=name, decoding=decoding.label)
                summary["win_rate"][name], judged[name] = compare_to_baseline(
                    judge, prompts, resp, responses[baseline], cfg.confidence)
                step(len(prompts))
    if cfg.all_pairs and len(responses) > 2:
        step = _step(bar, stage="judge all pairs", decoding=decoding.label)
        summary["bradley_terry"] = bradley_terry_scores(judge, prompts, responses)
        step(len(prompts) * math.comb(len(responses), 2))
    rows = []
    for i, prompt in enumerate(prompts):
        row = {"decoding": decoding.label, "temperature": summary["temperature"], "prompt": _prompt_json(prompt),
               "responses": {}}
        for name, resp in responses.items():
            entry = {"text": resp.texts[i], "finished": resp.finished[i], "num_tokens": resp.num_tokens[i]}
            entry.update({key: values[i] for key, values in per[name].items()})
            if name in judged:
                entry["score_vs_baseline"] = judged[name][i]
            row["responses"][name] = entry
        rows.append(row)
    return summary, rows


def _prompt_json(prompt: Any) -> Any:
    """A prompt as plain data (chat prompts are lists of `Message` records)."""
    if isinstance(prompt, str):
        return prompt
    return [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in prompt]


def _judge_for(judge, prompts: Sequence, responses: dict[str, Responses]):
    """Score every response once when the judge scores responses on their own."""
    if not hasattr(judge, "scores"):
        return judge
    items = [(p, t, f) for r in responses.values() for p, t, f in zip(prompts, r.texts, r.finished)]
    return ScoredJudge(judge, items)


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _context(cfg: EvalConfig) -> _Context:
    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.tasks import get_task

    task_prompts = cfg.prompts.task is not None and cfg.prompts.path is None
    task = get_task(cfg.prompts.task, seed=cfg.prompts.task_seed) if cfg.prompts.task else None
    device = _device(cfg.run.device)
    # Explicit for fp32 too: transformers 5 reads dtype=None as "auto", the checkpoint's own dtype.
    dtype = torch.bfloat16 if cfg.run.precision == "bf16" else torch.float32
    prompts, source = load_eval_prompts(cfg, task)
    rm = load_reward_model(cfg.reward_model, dtype=dtype).to(device) if cfg.reward_model else None
    baseline = next(m for m in cfg.models if m.name == cfg.baseline_name)
    ctx = _Context(cfg, prompts, source, task if task_prompts else None, rm,
                   resolve_model_dir(cfg.reference or baseline.path), None, None, _perplexity_records(cfg, task),
                   device, dtype)
    if any(not d.greedy for d in cfg.decodings):
        ctx.reference, ctx.reference_tokenizer = _load_model(ctx.reference_path, ctx)
    return ctx


def evaluate_models(cfg: EvalConfig) -> dict:
    """Evaluate every model of `cfg` (see the module docstring); write the run directory and return
    the summary."""
    from rlhfkit.rundir import Progress, RunDir, seed_everything

    if cfg.run.num_threads:
        torch.set_num_threads(cfg.run.num_threads)
    seed_everything(cfg.seed)
    ctx = _context(cfg)
    base_judge = build_judge(cfg.judge, ctx.task, ctx.rm, cfg.reward_model, cfg.batch_size, ctx.device, ctx.dtype)
    run = RunDir(cfg.run.out_dir, tensorboard=False)
    run.save_config(config_to_dict(cfg), {"n_prompts": len(ctx.prompts), "prompt_source": ctx.prompt_source})
    responses: dict[str, dict[str, Responses]] = {d.label: {} for d in cfg.decodings}
    infos: dict[str, dict] = {}
    # Single process (no Accelerate here), so the flag alone decides whether the bar shows.
    with Progress(_progress_total(ctx), "eval", cfg.run.progress) as bar:
        for spec in cfg.models:
            per_decoding, infos[spec.name] = evaluate_model(spec, ctx, bar)
            for label, resp in per_decoding.items():
                responses[label][spec.name] = resp
        summary: dict[str, Any] = {
            "baseline": cfg.baseline_name, "judge": getattr(base_judge, "name", cfg.judge.callable),
            "reference": str(ctx.reference_path),
            "prompt_source": ctx.prompt_source, "n_prompts": len(ctx.prompts), "max_new_tokens": cfg.max_new_tokens,
            "confidence": cfg.confidence, "models": infos, "decodings": {},
        }
        samples_path = Path(cfg.run.out_dir) / "samples.jsonl"
        with open(samples_path, "w") as fh:
            for decoding in cfg.decodings:
                bar.update(0, stage="judge", decoding=decoding.label)  # a scoring judge scores every response here
                judge = _judge_for(base_judge, ctx.prompts, responses[decoding.label])
                summary["decodings"][decoding.label], rows = summarize_decoding(
                    decoding, responses[decoding.label], infos, judge, ctx, bar)
                for row in rows:
                    fh.write(json.dumps(_finite(row), default=str) + "\n")
    summary = _finite(summary)
    run.write_summary(summary)
    run.close()
    return summary
