"""Turning rankings, ratings and scored candidates into preference pairs (and scores into rankings).

One pairing rule serves all of them (`_pairs`): every unordered pair of distinct responses to one
prompt gives a pair, the one with the higher value chosen; equal values are ties, dropped (and
counted) or kept with `tie=True`. Prompt ids, annotators and per-response provenance are carried
onto each pair, and the values that decided it are kept in `meta`.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from rlhfkit.data.errors import SkipReport
from rlhfkit.data.schemas import CandidateSet, PreferencePair, Prompt, Provenance, Ranking, Rating

Ties = Literal["drop", "keep"]
log = logging.getLogger(__name__)


@dataclass
class _Item:
    """One response with the value that orders it (higher = better) and what travels with it."""

    text: str
    value: float
    shown: Any
    """The value as the source states it (a rank, a mean rating, a score), kept in the pair's meta."""
    provenance: Provenance | None = None
    annotators: set[str | None] = field(default_factory=set)
    meta: dict[str, Any] = field(default_factory=dict)


def _check_ties(ties: str) -> None:
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be 'drop' or 'keep', got {ties!r}")


def _pairs(prompt: Prompt, prompt_id: str | None, items: Sequence[_Item], *, ties: Ties,
           margin_scale: float | None, label: str, meta: dict[str, Any], skips: SkipReport,
           where: str) -> list[PreferencePair]:
    """All C(K,2) pairs of `items`, higher value chosen; margin = value gap × `margin_scale`
    (None: no margin). `label` names the value in meta (`rank` → `rank_chosen`, `rank_rejected`)."""
    pairs = []
    for a, b in itertools.combinations(items, 2):
        tie = a.value == b.value
        if tie and ties == "drop":
            skips.count("tie", f"{where}: responses {a.text[:40]!r} and {b.text[:40]!r} tie "
                               f"({label} {a.shown})")
            continue
        chosen, rejected = (b, a) if b.value > a.value else (a, b)
        annotators = chosen.annotators | rejected.annotators
        # Per-response metadata (ratings carry their own) rides along under meta_chosen/meta_rejected.
        extra = {f"meta_{side}": item.meta for side, item in (("chosen", chosen), ("rejected", rejected))
                 if item.meta}
        pairs.append(PreferencePair(
            prompt=prompt, chosen=chosen.text, rejected=rejected.text, tie=tie,
            margin=None if margin_scale is None else (chosen.value - rejected.value) * margin_scale,
            annotator=annotators.pop() if len(annotators) == 1 else None, prompt_id=prompt_id,
            chosen_provenance=chosen.provenance, rejected_provenance=rejected.provenance,
            meta={**meta, f"{label}_chosen": chosen.shown, f"{label}_rejected": rejected.shown, **extra},
        ))
    return pairs


def _finish(pairs: list[PreferencePair], skips: SkipReport | None, own: SkipReport,
            what: str) -> list[PreferencePair]:
    """Hand dropped ties to the caller's report, or log them when the caller gave none."""
    if skips is not None:
        skips.merge(own)
    elif own.total:
        log.info("%s: %s", what, own)
    return pairs


def rankings_to_pairs(rankings: Iterable[Ranking], ties: Ties = "drop",
                      skips: SkipReport | None = None) -> list[PreferencePair]:
    """Every pair of differently ranked responses of each ranking, the better-ranked chosen.

    A K-way ranking gives up to C(K,2) pairs (the full set that the Plackett–Luce / InstructGPT
    RM loss averages over). Tied responses (equal rank) are dropped and counted in `skips` under
    `tie`, or kept with `tie=True` (`ties="keep"`). No margin; ranks go to meta.
    """
    _check_ties(ties)
    own, pairs = SkipReport(), []
    for n, ranking in enumerate(rankings, start=1):
        provenance = ranking.provenance or [None] * len(ranking.responses)
        items = [_Item(text, -rank, rank, prov, {ranking.annotator})
                 for text, rank, prov in zip(ranking.responses, ranking.ranks, provenance)]
        pairs += _pairs(ranking.prompt, ranking.prompt_id, items, ties=ties, margin_scale=None,
                        label="rank", meta=dict(ranking.meta), skips=own,
                        where=f"ranking {n} (prompt_id {ranking.prompt_id})")
    return _finish(pairs, skips, own, "rankings_to_pairs")


def _prompt_key(prompt_id: str | None, prompt: Prompt) -> tuple[str | None, str]:
    text = prompt if isinstance(prompt, str) else json.dumps([m.model_dump() for m in prompt])
    return prompt_id, text


def ratings_to_pairs(ratings: Iterable[Rating], margin_scale: float = 1.0, ties: Ties = "drop",
                     skips: SkipReport | None = None) -> list[PreferencePair]:
    """Pairs from Likert ratings of responses to the same prompt (same `prompt_id` and text).

    Ratings of the same response text (several annotators) are averaged first. Each pair of
    responses with different (mean) ratings gives a pair, the higher-rated chosen, with
    `margin = (rating_chosen − rating_rejected) × margin_scale` (the Llama 2 margin term; set
    `margin_scale=0` for none). Equal ratings: dropped and counted under `tie`, or kept with
    `tie=True` and margin 0. A prompt with a single rated response gives no pair; its ratings
    are counted under `unpaired`. Groups keep the order in which prompts and responses first
    appear.
    """
    _check_ties(ties)
    groups: dict[tuple[str | None, str], dict[str, list[Rating]]] = {}
    for rating in ratings:
        by_text = groups.setdefault(_prompt_key(rating.prompt_id, rating.prompt), {})
        by_text.setdefault(rating.response, []).append(rating)
    own, pairs = SkipReport(), []
    for (prompt_id, _), by_text in groups.items():
        if len(by_text) == 1:
            for rating in next(iter(by_text.values())):
                own.count("unpaired", f"prompt_id {prompt_id}: the only rated response, nothing to pair with")
            continue
        items = []
        for text, rated in by_text.items():
            mean = sum(r.rating for r in rated) / len(rated)
            items.append(_Item(text, mean, mean, rated[0].provenance, {r.annotator for r in rated},
                               rated[0].meta))
        first = next(iter(by_text.values()))[0]
        pairs += _pairs(first.prompt, prompt_id, items, ties=ties, margin_scale=margin_scale,
                        label="rating", meta={}, skips=own, where=f"ratings of prompt_id {prompt_id}")
    return _finish(pairs, skips, own, "ratings_to_pairs")


def _check_scores(candidates: CandidateSet, scores: Sequence[float]) -> None:
    if len(scores) != len(candidates.candidates):
        raise ValueError(f"{len(scores)} scores for {len(candidates.candidates)} candidates "
                         f"(prompt_id {candidates.prompt_id})")


def scores_to_ranking(candidates: CandidateSet, scores: Sequence[float],
                      annotator: str | None = None) -> Ranking:
    """A ranking of a candidate set by score, higher = better: rank = 1 + number of candidates
    scoring strictly more, so equal scores share a rank (e.g. scores 3, 1, 3 → ranks 1, 3, 1)."""
    _check_scores(candidates, scores)
    ranks = [1 + sum(other > s for other in scores) for s in scores]
    return Ranking(prompt=candidates.prompt, prompt_id=candidates.prompt_id,
                   responses=[c.text for c in candidates.candidates], ranks=ranks, annotator=annotator,
                   provenance=[c.provenance for c in candidates.candidates],
                   meta={**candidates.meta, "scores": list(scores)})


def scores_to_pairs(candidates: CandidateSet, scores: Sequence[float], ties: Ties = "drop",
                    margin_scale: float | None = None, annotator: str | None = None,
                    skips: SkipReport | None = None) -> list[PreferencePair]:
    """All C(K,2) pairs of a scored candidate set (e.g. by the task's gold oracle or a judge),
    higher score chosen; margin = score gap × `margin_scale` when given. Ties as in
    `rankings_to_pairs`."""
    _check_ties(ties)
    _check_scores(candidates, scores)
    items = [_Item(c.text, s, s, c.provenance, {annotator}) for c, s in zip(candidates.candidates, scores)]
    own = SkipReport()
    pairs = _pairs(candidates.prompt, candidates.prompt_id, items, ties=ties, margin_scale=margin_scale,
                   label="score", meta=dict(candidates.meta), skips=own,
                   where=f"candidates of prompt_id {candidates.prompt_id}")
    return _finish(pairs, skips, own, "scores_to_pairs")
