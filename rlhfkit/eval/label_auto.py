"""Labelling candidate sets with an automatic judge: pairs, K-way rankings or 1–5 ratings.

`label_candidates(config)` is the Python API; `rlhfkit label-auto CONFIG key=value …` calls it.
It reads `CandidateSet`s (from `rlhfkit sample`) and writes preference records — the same schema
the annotation app exports, so the reward-model stage cannot tell the two apart.

Judges:
- `simulated`: the built-in task's `SimulatedAnnotator`s (ids `sim-0`, `sim-1`, …): Bradley–Terry
  comparisons, Plackett–Luce rankings and Gumbel-noised ratings around the gold reward.
- `callable`: a Python function `module:function` scoring a list of (prompt, response, finished)
  tuples → floats; `reward_model`: a reward-model directory. Scores become labels noiselessly
  (higher wins; |Δ| ≤ `tie_eps` ties) or, with `noise_temperature` τ, through the simulated
  annotator's noise model with the score in place of the gold reward: P(a ≻ b) = σ((s_a − s_b)/τ).

Each annotator sees a set's candidates in its own random order, recorded as `meta.shown_order`
(candidate indices in data order, first shown first — the annotation app's convention). Pairs
take consecutive-in-order positions (all pairs, or the first two shown = one uniformly random
pair); rankings and ratings list responses in data order with the shown order beside them.

The summary compares the labels with the noiseless gold order: each label implies comparisons
(i, j, P(i ≻ j) as labelled ∈ {1, ½, 0}); agreement is their mean score against gold (gold ties
count ½). For the simulated judge it also gives the Bayes ceiling of those comparisons, mean
σ(|g_i − g_j|/τ): the agreement to expect and the best accuracy a reward model can reach.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config.base import config_to_dict
from rlhfkit.config.judge import JudgeLabelConfig
from rlhfkit.data.errors import DataError, SkipReport
from rlhfkit.data.schemas import MAX_RANKED, MIN_RANKED, CandidateSet, PreferencePair, Ranking, Rating, Record
from rlhfkit.eval.judges import CallableJudge, RewardModelJudge, load_callable, preference_from_scores
from rlhfkit.models.text import plain_prompt_text

_EULER_GAMMA = 0.5772156649015329
"""Mean of the standard Gumbel distribution (subtracted so rating noise has mean 0)."""
ANNOTATOR_PREFIX = {"simulated": "sim", "callable": "fn", "reward_model": "rm"}


@dataclass(frozen=True)
class Judged:
    """One comparison implied by a label: candidates i, j of set `set_index` and the labelled
    P(i ≻ j) — 1, 0, or ½ for a tie."""

    set_index: int
    i: int
    j: int
    outcome: float


def shown_order(seed: int, set_index: int, prompt_id: str, annotator: str, k: int) -> list[int]:
    """The random order (candidate indices) in which `annotator` is shown set `set_index`."""
    order = list(range(k))
    random.Random(f"shown:{seed}:{set_index}:{prompt_id}:{annotator}").shuffle(order)
    return order


def strength_level(p_chosen: float, cuts: tuple[float, ...]) -> int:
    """Strength 0..len(cuts) of a preference held with probability p_chosen: the cuts it reaches."""
    return sum(p_chosen >= c for c in cuts)


def assigned_annotators(set_index: int, per_set: int, n_annotators: int) -> list[int]:
    """Annotators of a set, dealt in turn: (s·L + j) mod N for j < L (distinct as L ≤ N)."""
    return [(set_index * per_set + j) % n_annotators for j in range(per_set)]


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(1.0 - rng.random()))


def _key(prompt_text: str, response: str, finished: bool) -> str:
    return json.dumps([prompt_text, response, finished])


class ScoreLabeller:
    """Labels from per-response scores (higher = better), with the `SimulatedAnnotator` interface.

    Noiseless (temperature None): the higher score wins, |Δ| ≤ tie_eps is a tie, ranks sort the
    scores and ratings bin them. With τ: comparisons are Bradley–Terry σ(Δ/τ), rankings a
    Plackett–Luce (Gumbel-max) draw on s/τ, ratings bin s + τ·(G − γ) — the simulated
    annotator's noise model with the score in place of the gold reward.
    """

    def __init__(self, scores: dict[str, float], annotator_id: str, temperature: float | None, tie_eps: float,
                 thresholds: tuple[float, ...], seed: int) -> None:
        self.scores, self.annotator_id, self.temperature = scores, annotator_id, temperature
        self.tie_eps, self.thresholds = tie_eps, thresholds
        self._rng = random.Random(f"score-annotator:{annotator_id}:{seed}")

    def score(self, prompt: str, response: str, finished: bool = True) -> float:
        return self.scores[_key(prompt, response, finished)]

    def compare(self, prompt: str, a: str, b: str, finished_a: bool = True,
                finished_b: bool = True) -> tuple[int | None, float]:
        """(winner 0 = a, 1 = b, None = tie; P(a ≻ b) = σ(Δ/τ), τ = 1 when noiseless)."""
        s_a, s_b = self.score(prompt, a, finished_a), self.score(prompt, b, finished_b)
        p_a = preference_from_scores(s_a, s_b, self.temperature or 1.0)
        if self.temperature is not None:
            return (0 if self._rng.random() < p_a else 1), p_a
        if abs(s_a - s_b) <= self.tie_eps:
            return None, p_a
        return (0 if s_a > s_b else 1), p_a

    def rank(self, prompt: str, responses: list[str], finished: list[bool]) -> list[int]:
        """Competition ranks (1 = best); responses within tie_eps (chained) share a rank."""
        scores = [self.score(prompt, r, f) for r, f in zip(responses, finished)]
        groups: list[list[int]] = []
        for i in sorted(range(len(scores)), key=scores.__getitem__):
            if groups and scores[i] - scores[groups[-1][-1]] <= self.tie_eps:
                groups[-1].append(i)
            else:
                groups.append([i])
        mean = [statistics.fmean(scores[i] for i in g) for g in groups]
        utility = mean if self.temperature is None else [m / self.temperature + _gumbel(self._rng) for m in mean]
        ranks, better = [0] * len(scores), 0
        for g in sorted(range(len(groups)), key=lambda g: -utility[g]):
            for i in groups[g]:
                ranks[i] = better + 1
            better += len(groups[g])
        return ranks

    def rate(self, prompt: str, response: str, finished: bool = True) -> int:
        """1 + the number of thresholds below the (noisy) score."""
        value = self.score(prompt, response, finished)
        if self.temperature is not None:
            value += self.temperature * (_gumbel(self._rng) - _EULER_GAMMA)
        return 1 + sum(value > t for t in self.thresholds)


@dataclass(frozen=True)
class SetContext:
    """What the labelling functions need about one set and one annotator."""

    index: int
    cs: CandidateSet
    order: list[int]
    annotator: str
    judge: str

    @property
    def prompt_text(self) -> str:
        return plain_prompt_text(self.cs.prompt)


def label_pairs(labeller, ctx: SetContext, cfg: JudgeLabelConfig) -> list[tuple[PreferencePair, Judged]]:
    """Pairs of shown positions (all, or the first two shown) judged by `labeller.compare`."""
    cands = ctx.cs.candidates
    positions = [(0, 1)] if cfg.pairs == "one" else itertools.combinations(range(len(ctx.order)), 2)
    out = []
    for x, y in positions:
        a, b = ctx.order[x], ctx.order[y]
        winner, p_a = labeller.compare(ctx.prompt_text, cands[a].text, cands[b].text, cands[a].finished,
                                       cands[b].finished)
        tie = winner is None
        c, r = (b, a) if winner == 1 else (a, b)
        p_chosen = p_a if c == a else 1.0 - p_a
        margin = strength = None
        if not tie and cfg.margin == "strength":
            strength = strength_level(p_chosen, cfg.strength_cuts)
            margin = cfg.strength_margins[strength]
        elif not tie and cfg.margin == "score_gap":
            margin = abs(labeller.score(ctx.prompt_text, cands[c].text, cands[c].finished)
                         - labeller.score(ctx.prompt_text, cands[r].text, cands[r].finished))
        pair = PreferencePair(
            prompt=ctx.cs.prompt, chosen=cands[c].text, rejected=cands[r].text, margin=margin, strength=strength,
            tie=tie, annotator=ctx.annotator, prompt_id=ctx.cs.prompt_id, chosen_provenance=cands[c].provenance,
            rejected_provenance=cands[r].provenance,
            meta={"shown_order": [a, b], "candidate_index": [c, r], "judge_p": p_chosen, "judge": ctx.judge})
        out.append((pair, Judged(ctx.index, c, r, 0.5 if tie else 1.0)))
    return out


def _judged_from_levels(index: int, levels: list[int], lower_is_better: bool) -> list[Judged]:
    """Every candidate pair (i < j) ordered by rank or rating; equal levels are ties."""
    out = []
    for i, j in itertools.combinations(range(len(levels)), 2):
        gap = (levels[j] - levels[i]) if lower_is_better else (levels[i] - levels[j])
        out.append(Judged(index, i, j, 1.0 if gap > 0 else 0.0 if gap < 0 else 0.5))
    return out


def label_ranking(labeller, ctx: SetContext) -> tuple[Ranking, list[Judged]]:
    """One K-way ranking; the labeller sees the responses in shown order."""
    cands = ctx.cs.candidates
    shown = labeller.rank(ctx.prompt_text, [cands[i].text for i in ctx.order], [cands[i].finished for i in ctx.order])
    ranks = [0] * len(cands)
    for position, i in enumerate(ctx.order):
        ranks[i] = shown[position]
    ranking = Ranking(prompt=ctx.cs.prompt, responses=[c.text for c in cands], ranks=ranks, annotator=ctx.annotator,
                      prompt_id=ctx.cs.prompt_id, provenance=[c.provenance for c in cands],
                      meta={"shown_order": ctx.order, "judge": ctx.judge})
    return ranking, _judged_from_levels(ctx.index, ranks, lower_is_better=True)


def label_ratings(labeller, ctx: SetContext) -> tuple[list[Rating], list[Judged]]:
    """A 1–5 rating per candidate, asked in shown order."""
    cands = ctx.cs.candidates
    levels = [0] * len(cands)
    ratings = []
    for position, i in enumerate(ctx.order):
        levels[i] = labeller.rate(ctx.prompt_text, cands[i].text, cands[i].finished)
        ratings.append(Rating(prompt=ctx.cs.prompt, response=cands[i].text, rating=levels[i], annotator=ctx.annotator,
                              prompt_id=ctx.cs.prompt_id, provenance=cands[i].provenance,
                              meta={"shown_order": ctx.order, "shown_position": position, "candidate_index": i,
                                    "judge": ctx.judge}))
    return ratings, _judged_from_levels(ctx.index, levels, lower_is_better=False)


def gold_agreement(judged: list[Judged], gold: list[list[float]]) -> float | None:
    """Mean agreement of labelled comparisons with the gold order: the outcome when g_i > g_j,
    1 − outcome when g_i < g_j, ½ when the golds tie."""
    if not judged:
        return None
    total = 0.0
    for c in judged:
        g_i, g_j = gold[c.set_index][c.i], gold[c.set_index][c.j]
        total += c.outcome if g_i > g_j else 1.0 - c.outcome if g_i < g_j else 0.5
    return total / len(judged)


def usable_sets(sets: list[CandidateSet], mode: str, source: str, on_error: str, skips: SkipReport
                ) -> list[CandidateSet]:
    """Sets with a candidate count the label type can take (pairs ≥ 2, rankings 2–9, ratings ≥ 1);
    the others raise a `DataError` or are counted in `skips`."""
    lo = 1 if mode == "rating" else MIN_RANKED
    hi = MAX_RANKED if mode == "ranking" else math.inf
    kept = []
    for n, cs in enumerate(sets):
        k = len(cs.candidates)
        if lo <= k <= hi:
            kept.append(cs)
            continue
        error = DataError(f"set {n + 1} (prompt_id {cs.prompt_id!r}) has {k} candidates; {mode} labels need "
                          f"{lo}–{hi if hi != math.inf else 'any'}", field="candidates",
                          reason="too_few_candidates" if k < lo else "too_many_candidates", file=source)
        if on_error == "raise":
            raise error
        skips.add(error)
    return kept


def scoring_judge(cfg: JudgeLabelConfig):
    """The `CallableJudge` or `RewardModelJudge` named by the config."""
    judge = cfg.judge
    if judge.kind == "callable":
        return CallableJudge(load_callable(judge.callable), name=f"fn:{judge.callable}")
    import torch

    from rlhfkit.models.reward import load_reward_model
    from rlhfkit.rollout.candidates import resolve_device

    dtype = torch.bfloat16 if cfg.run.precision == "bf16" else torch.float32
    rm = load_reward_model(judge.reward_model, dtype=dtype).to(resolve_device(cfg.run))
    if judge.head >= rm.num_heads:
        raise ValueError(f"judge.head={judge.head} but {judge.reward_model} has {rm.num_heads} head(s)")
    return RewardModelJudge(rm, head=judge.head, name=f"rm:{judge.reward_model}", batch_size=judge.batch_size)


def score_all(judge, sets: list[CandidateSet], orders: list[list[int]], batch_size: int) -> dict[str, float]:
    """Score every candidate once, in batches; each set's candidates are passed in `orders[s]`
    (the shown order of its first annotator)."""
    items, keys = [], []
    for cs, order in zip(sets, orders):
        text = plain_prompt_text(cs.prompt)
        for i in order:
            c = cs.candidates[i]
            items.append((cs.prompt, c.text, c.finished))
            keys.append(_key(text, c.text, c.finished))
    scores: dict[str, float] = {}
    for start in range(0, len(items), batch_size):
        scores.update(zip(keys[start : start + batch_size], judge.scores(items[start : start + batch_size])))
    return scores


def build_labellers(cfg: JudgeLabelConfig, task, sets: list[CandidateSet], first_orders: list[list[int]]
                    ) -> tuple[dict[str, Any], str]:
    """(annotator id → labeller, judge description)."""
    judge = cfg.judge
    ids = [f"{ANNOTATOR_PREFIX[judge.kind]}-{i}" for i in range(judge.n_annotators)]
    if judge.kind == "simulated":
        from rlhfkit.tasks import SimulatedAnnotator

        return ({a: SimulatedAnnotator(task, judge.temperature, seed=cfg.seed, annotator_id=a, tie_eps=judge.tie_eps)
                 for a in ids}, f"simulated:{task.name}:tau={judge.temperature}")
    scorer = scoring_judge(cfg)
    scores = score_all(scorer, sets, first_orders, judge.batch_size)
    thresholds = judge.rating_thresholds
    if thresholds is None:
        values = list(scores.values())
        thresholds = tuple(statistics.quantiles(values, n=5, method="inclusive")) if len(values) > 1 else (0.0,) * 4
    return ({a: ScoreLabeller(scores, a, judge.noise_temperature, judge.tie_eps, tuple(thresholds), cfg.seed)
             for a in ids}, scorer.name)


def label_set(mode: str, labeller, ctx: SetContext, cfg: JudgeLabelConfig) -> tuple[list[Record], list[Judged]]:
    if mode == "pairwise":
        pairs = label_pairs(labeller, ctx, cfg)
        return [p for p, _ in pairs], [j for _, j in pairs]
    if mode == "ranking":
        ranking, judged = label_ranking(labeller, ctx)
        return [ranking], judged
    return label_ratings(labeller, ctx)


def summarize_labels(cfg: JudgeLabelConfig, task, sets: list[CandidateSet], records: list[Record],
                     judged: list[Judged]) -> dict[str, Any]:
    """Counts, position balance, and agreement with the gold order (plus the Bayes ceiling for the
    simulated judge, whose comparisons are Bradley–Terry in every label type without ties)."""
    out: dict[str, Any] = {"records": len(records), "by_annotator": dict(sorted(Counter(
        r.annotator for r in records).items())), "comparisons": len(judged),
        "tied_comparisons": sum(c.outcome == 0.5 for c in judged)}
    if cfg.mode == "pairwise":
        decided = [r for r in records if not r.tie]
        out["first_shown_win_rate"] = (statistics.fmean(r.meta["candidate_index"][0] == r.meta["shown_order"][0]
                                                        for r in decided) if decided else None)
    out["agreement_with_gold"] = out["bayes_ceiling"] = None
    if task is None or not judged:
        return out
    try:
        gold = [task.gold_rewards([plain_prompt_text(cs.prompt)] * len(cs.candidates),
                                  [c.text for c in cs.candidates], [c.finished for c in cs.candidates])
                for cs in sets]
    except ValueError as exc:
        if cfg.judge.kind == "simulated":
            raise
        out["gold_note"] = f"no gold agreement: the prompts are not {task.name} prompts ({exc})"
        return out
    out["agreement_with_gold"] = gold_agreement(judged, gold)
    ceiling_applies = cfg.mode == "pairwise" or (cfg.mode == "ranking" and cfg.judge.tie_eps == 0)
    if cfg.judge.kind == "simulated" and ceiling_applies:
        from rlhfkit.tasks import bayes_ceiling

        out["bayes_ceiling"] = bayes_ceiling([gold[c.set_index][c.i] for c in judged],
                                             [gold[c.set_index][c.j] for c in judged], cfg.judge.temperature)
    return out


def label_candidates(cfg: JudgeLabelConfig) -> dict[str, Any]:
    """Label every candidate set with the configured judge; write the preference records and the
    run directory; return the summary."""
    from rlhfkit.data.io import read_records, write_records
    from rlhfkit.rundir import Progress, RunDir, print_effective_config
    from rlhfkit.tasks import get_task

    started = time.perf_counter()
    if cfg.run.num_threads:
        import torch  # only here: the simulated and callable judges need no torch

        torch.set_num_threads(cfg.run.num_threads)
    sets, skips = read_records(cfg.candidates, kind="candidates", on_error=cfg.on_error)
    read = len(sets)
    sets = usable_sets(list(sets), cfg.mode, cfg.candidates, cfg.on_error, skips)
    if not sets:
        raise ValueError(f"{cfg.candidates}: no candidate sets to label ({skips})")
    task = get_task(cfg.task, seed=cfg.task_seed) if cfg.task else None
    ids = [f"{ANNOTATOR_PREFIX[cfg.judge.kind]}-{i}" for i in range(cfg.judge.n_annotators)]
    plan = [[ids[a] for a in assigned_annotators(s, cfg.labels_per_set, len(ids))] for s in range(len(sets))]
    orders = [{a: shown_order(cfg.seed, s, cs.prompt_id, a, len(cs.candidates)) for a in plan[s]}
              for s, cs in enumerate(sets)]
    output = Path(cfg.output) if cfg.output else Path(cfg.run.out_dir) / "labels.jsonl"
    derived = {"sets": len(sets), "annotators": ids, "output": str(output)}
    run = RunDir(cfg.run.out_dir, tensorboard=False)
    run.save_config(config_to_dict(cfg), derived)
    print_effective_config("label-auto", config_to_dict(cfg), derived, cfg.run.progress)

    labellers, judge_name = build_labellers(cfg, task, sets, [orders[s][plan[s][0]] for s in range(len(sets))])
    records: list[Record] = []
    judged: list[Judged] = []
    with Progress(len(sets), "label", cfg.run.progress) as bar:
        for s, cs in enumerate(sets):
            for annotator in plan[s]:
                ctx = SetContext(s, cs, orders[s][annotator], annotator, judge_name)
                new_records, new_judged = label_set(cfg.mode, labellers[annotator], ctx, cfg)
                records += new_records
                judged += new_judged
            bar.update(1)
    write_records(output, records, kind={"pairwise": "pair", "ranking": "ranking", "rating": "rating"}[cfg.mode])

    summary = {"mode": cfg.mode, "judge": judge_name, "sets_read": read, "sets_labelled": len(sets),
               "skipped": skips.as_dict(), **summarize_labels(cfg, task, sets, records, judged),
               "output": str(output), "seconds": round(time.perf_counter() - started, 3)}
    run.write_summary(summary)
    run.close()
    return summary
