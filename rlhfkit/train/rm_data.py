"""Preference data for reward-model training: records → tokenised *groups* (one prompt, K ranked
responses), from preference files or from the built-in task labelled by a simulated annotator.
Pairs whose inputs collapse after truncation, and all-tie records, are counted and left out."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config.rm import RMConfig
from rlhfkit.models.reward import RMInput, RewardModel
from rlhfkit.rundir import RunDir


@dataclass(frozen=True)
class Group:
    """One prompt with K ranked responses, tokenised. `ranks`: 1 = best, equal = tie."""

    prompt: object
    """The prompt (text or messages)."""
    texts: tuple[str, ...]
    """The responses."""
    finished: tuple[bool, ...]
    """Whether each response ended with EOS."""
    inputs: tuple[RMInput, ...]
    """The tokenised prompt+response of each response."""
    ranks: tuple[int, ...]
    margins: tuple[tuple[float, ...], ...] | None = None
    """(K, K): margin required when response i beats j; None = no margin."""
    bucket: str | None = None
    """Strength / margin label of a pair (for accuracy by bucket)."""
    gold: tuple[float, ...] | None = None
    """Gold rewards of the responses, when the task labelled them."""

    @property
    def length(self) -> int:
        """Its longest sequence: the padded width when every response gets its own row."""
        return max(len(x.ids) for x in self.inputs)

    @property
    def has_identical_inputs(self) -> bool:
        """Two responses ranked differently tokenise to the same model input (e.g. after
        truncation): the preference between them cannot be learnt."""
        keys = [(tuple(x.ids), tuple(x.type_ids or ())) for x in self.inputs]
        return any(keys[i] == keys[j] for i, j in self.pairs())

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) index pairs with different ranks."""
        return [(i, j) if self.ranks[i] < self.ranks[j] else (j, i)
                for i, j in itertools.combinations(range(len(self.ranks)), 2) if self.ranks[i] != self.ranks[j]]


# ---------------------------------------------------------------------------------------- data
def _group_from_record(rec, kind: str, model: RewardModel, margin_scale: float | None) -> Group | None:
    """A record (pair / ranking, or a ranking built from ratings) → Group; None when it has no
    strict preference (a tie). `margin_scale` None: no margins (`loss.margin: false`), whatever
    margins or strengths the record carries."""
    from rlhfkit.algos.rm_losses import strength_to_margin

    if kind == "pair":
        responses, ranks = (rec.chosen, rec.rejected), ((1, 1) if rec.tie else (1, 2))
        margin = rec.margin if rec.margin is not None else (
            float(strength_to_margin(rec.strength)) if rec.strength is not None else None)
        margins = None if margin is None or margin_scale is None else \
            ((0.0, margin * margin_scale), (margin * margin_scale, 0.0))
        bucket = (f"strength={rec.strength}" if rec.strength is not None
                  else f"margin={rec.margin:g}" if rec.margin is not None else None)
        gold = None
    else:
        responses, ranks, bucket = tuple(rec.responses), tuple(rec.ranks), None
        values = rec.meta.get("scores") if kind == "rating" else None
        margins = None if values is None or margin_scale is None else \
            tuple(tuple((a - b) * margin_scale for b in values) for a in values)
        gold = tuple(rec.meta["gold"]) if "gold" in rec.meta else None
    if len(set(ranks)) < 2:
        return None
    finished = tuple(rec.meta.get("finished", [True] * len(responses)) if kind == "ranking"
                     else [True] * len(responses))
    inputs = tuple(model.encode_group(rec.prompt, responses, finished))
    return Group(rec.prompt, tuple(responses), finished, inputs, ranks, margins, bucket, gold)


def ratings_to_rankings(ratings) -> list:
    """Ratings of one prompt (same prompt_id and text) → one Ranking by mean rating per response
    text (rank = 1 + number rated strictly higher; `meta["scores"]` = the mean ratings)."""
    from rlhfkit.data import Candidate, CandidateSet
    from rlhfkit.data.convert import scores_to_ranking

    by_prompt: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    prompts = {}
    for r in ratings:
        key = (r.prompt_id, r.prompt if isinstance(r.prompt, str) else json.dumps([m.model_dump() for m in r.prompt]))
        prompts[key] = r.prompt
        by_prompt[key][r.response].append(r.rating)
    rankings = []
    for key, by_text in by_prompt.items():
        if len(by_text) < 2:
            continue
        cands = CandidateSet(prompt_id=key[0] or "", prompt=prompts[key],
                             candidates=[Candidate(text=t) for t in by_text])
        rankings.append(scores_to_ranking(cands, [sum(v) / len(v) for v in by_text.values()]))
    return rankings


def read_groups(path: str, kind: str, model: RewardModel, on_error: str, margin_scale: float | None,
                skips) -> list[Group]:
    """Groups from a preference file of `kind` records (ties and one-response groups left out)."""
    from rlhfkit.data import read_records

    records, report = read_records(path, kind=kind, on_error=on_error)
    skips.merge(report)
    if kind == "rating":
        records = ratings_to_rankings(records)
    groups = [_group_from_record(r, kind, model, margin_scale) for r in records]
    for _ in range(sum(g is None for g in groups)):
        skips.count("no_strict_preference", f"{path}: a record whose responses all tie")
    groups = [g for g in groups if g is not None]
    for _ in range(sum(g.has_identical_inputs for g in groups)):
        skips.count("identical_after_truncation",
                    f"{path}: responses identical after truncation to model.max_length tokens")
    return [g for g in groups if not g.has_identical_inputs]


def sample_candidates(model_dir: str, prompts: list[str], k: int, temperature: float, max_new_tokens: int,
                      seed: int) -> list[list[tuple[str, bool]]]:
    """k sampled (text, finished) responses per prompt from a causal LM dir (e.g. an SFT run's
    `model/`), duplicates removed."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.sampling import sample_responses

    model, tokenizer = load_causal_lm(model_dir), load_tokenizer(model_dir)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = sample_responses(model, tokenizer, [p for p in prompts for _ in range(k)],
                                   max_new_tokens=max_new_tokens, temperature=temperature)
    out = []
    for i in range(len(prompts)):
        unique = {s.text: s.finished for s in samples[i * k : (i + 1) * k] if s.text}
        out.append(list(unique.items()))
    return out


def write_task_rankings(path: Path, task, split: str, n: int, cfg, annotator, seed: int) -> None:
    """Generate `n` prompts of a task split, K responses each (the task's demo writer, or
    sampled from `cfg.responses_from`), ranked by the simulated annotator; write them as Ranking
    records with the gold rewards in `meta` (the labelled dataset is a file like any other)."""
    from rlhfkit.data import Ranking, write_records

    prompts = [p.prompt for p in task.prompts(split, n)]
    if cfg.responses_from:
        candidates = sample_candidates(cfg.responses_from, prompts, cfg.k, cfg.sample_temperature,
                                       cfg.max_new_tokens, seed)
    else:
        candidates = [list(dict.fromkeys(task.sample_demos(p, cfg.k, seed=seed))) for p in prompts]
        candidates = [[(text, True) for text in texts] for texts in candidates]
    records = []
    for prompt, cands in zip(prompts, candidates):
        if len(cands) < 2:
            continue
        texts, finished = [c[0] for c in cands], [c[1] for c in cands]
        ranks = annotator.rank(prompt, texts, finished)
        gold = task.gold_rewards([prompt] * len(texts), texts, finished)
        records.append(Ranking(prompt=prompt, responses=texts, ranks=ranks, annotator=annotator.annotator_id,
                               meta={"gold": gold, "finished": finished,
                                     "annotator_temperature": annotator.temperature}))
    write_records(path, records)


def load_rm_data(cfg: RMConfig, model: RewardModel, run: RunDir, is_main: bool, skips, barrier):
    """(train groups, eval groups, task or None, annotator τ or None). Task data are generated
    once into RUN/data/{train,eval}.jsonl and read back from there (also on resume)."""
    from rlhfkit.tasks import DEFAULT_ANNOTATOR_TEMPERATURE, SimulatedAnnotator, get_task

    data, scale = cfg.data, (cfg.loss.margin_scale if cfg.loss.margin else None)
    if data.train_path:
        train = read_groups(data.train_path, data.kind, model, data.on_error, scale, skips)
        if data.eval_path:
            held = read_groups(data.eval_path, data.kind, model, data.on_error, scale, skips)
        else:
            cut = max(1, int(len(train) * data.eval_fraction))
            train, held = train[cut:], train[:cut]
        return train, held, None, None
    task = get_task(data.task, seed=data.task_seed)
    tau = data.annotator_temperature or DEFAULT_ANNOTATOR_TEMPERATURE
    paths = {split: run.path / "data" / f"{split}.jsonl" for split in ("train", "eval")}
    for split, n in (("train", data.n_train), ("eval", data.n_eval)):
        if is_main and not paths[split].exists():
            annotator = SimulatedAnnotator(task, tau, seed=cfg.run.seed, annotator_id=f"sim-{split}")
            write_task_rankings(paths[split], task, split, n, data, annotator, cfg.run.seed)
    barrier()
    groups = {s: read_groups(str(p), "ranking", model, "raise", scale, skips) for s, p in paths.items()}
    return groups["train"], groups["eval"], task, tau
