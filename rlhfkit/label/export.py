"""Export votes as the preference records the RM trainer reads, and the blind A/B summary.

`raw`: one record per annotator per task, nothing merged (OA #3389: always keep raw votes):
- pairwise / ab_eval → `PreferencePair` (tie / both-bad as `tie=True`; margin from the strength
  level via `strength_margins`); an edited response adds a pair chosen=edited, rejected=original;
- ranking → `Ranking` (not-rankable answers are left out); best–worst → `Ranking` with
  best = 1, the others tied at 2, worst = K;
- rating → `Rating`.
`aggregated`: one record per task:
- pairwise → majority label; margin = mean over votes of the signed margin (+m for the winner,
  −m against, 0 for a tie; m = strength margin, or 1 without strength, which makes it the
  vote-share margin (n_win − n_lose) / n);
- ranking / best–worst → ranks by Bradley–Terry strength over the implied pairwise votes;
- rating → the lower median rating per response.
Annotators appear only by pseudonym. Provenance travels with every record (admins only).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Literal

from sqlalchemy import Engine, select

from rlhfkit.data.schemas import PreferencePair, Provenance, Ranking, Rating, Record
from rlhfkit.label import agreement as ag
from rlhfkit.label import store
from rlhfkit.label.answers import PAIR_KINDS
from rlhfkit.label.projects import load_settings, project_row
from rlhfkit.label.report import JUDGE_PREFIX, Vote, load_votes, pair_labels

Format = Literal["jsonl", "json", "parquet", "datasets"]


def _candidates(engine: Engine, project_id: int) -> tuple[dict[int, Any], dict[int, Any]]:
    C, IT = store.candidate, store.item
    with engine.connect() as conn:
        cands = {r.id: r for r in conn.execute(
            select(C.c.id, C.c.text, C.c.provenance).join(IT, IT.c.id == C.c.item_id)
            .where(IT.c.project_id == project_id))}
        items = {r.id: r for r in conn.execute(
            select(IT.c.id, IT.c.prompt_id, IT.c.prompt).where(IT.c.project_id == project_id))}
    return cands, items


def export_records(engine: Engine, project: str, what: Literal["raw", "aggregated"] = "raw",
                   include_judges: bool = False) -> list[Record]:
    """Records of `project` (see module docstring); judges (`judge:` names) only on request."""
    with engine.connect() as conn:
        proj = project_row(conn, project)
    settings = load_settings(proj.settings)
    votes = [v for v in load_votes(engine, proj.id)
             if not v.skipped and v.answer is not None
             and (include_judges or not v.annotator.startswith(JUDGE_PREFIX))]
    cands, items = _candidates(engine, proj.id)
    ctx = _Ctx(proj.kind, settings.strength_margins, cands, items)
    if what == "raw":
        return [r for v in votes for r in ctx.raw(v)]
    by_task: dict[int, list[Vote]] = defaultdict(list)
    for v in votes:
        if v.repeat_of is None:
            by_task[v.task_id].append(v)
    return [r for group in by_task.values() for r in ctx.aggregated(group)]


class _Ctx:
    """Turns votes of one project into records (texts and provenance looked up by id)."""

    def __init__(self, kind: str, margins: tuple[float, ...], cands: dict, items: dict) -> None:
        self.kind, self.margins, self.cands, self.items = kind, margins, cands, items

    def _common(self, v: Vote) -> dict[str, Any]:
        item = self.items[v.item_id]
        return {"prompt": item.prompt, "prompt_id": item.prompt_id}

    def _text(self, v: Vote, i: int) -> str:
        return self.cands[v.candidate_ids[i]].text

    def _prov(self, v: Vote, i: int) -> Provenance:
        return Provenance(**self.cands[v.candidate_ids[i]].provenance)

    def raw(self, v: Vote) -> list[Record]:
        meta = {"task_id": v.task_id, "shown_order": v.display_order, "seconds": v.seconds,
                "is_gold": v.is_gold, "repeat_of": v.repeat_of, "critique": v.critique}
        base = {**self._common(v), "annotator": v.pseudonym}
        a = v.answer
        if self.kind in PAIR_KINDS:
            w = a["winner"]
            c, r = (w, 1 - w) if w is not None else (0, 1)
            margin = self.margins[a["strength"]] if a.get("strength") is not None else None
            out: list[Record] = [self._pair(v, c, r, base, margin=margin, strength=a["strength"],
                                            tie=w is None, meta={**meta, "both_bad": a["both_bad"]})]
            edited = v.edited
            if edited and edited != self._text(v, c):
                out.append(PreferencePair(**base, chosen=edited, rejected=self._text(v, c),
                                          rejected_provenance=self._prov(v, c),
                                          meta={**meta, "source": "edit"}))
            return out
        if self.kind == "rating":
            return [Rating(**base, response=self._text(v, 0), rating=a["rating"],
                           provenance=self._prov(v, 0), meta=meta)]
        ranks = a["ranks"] if self.kind == "ranking" else _bws_ranks(a, len(v.candidate_ids))
        if ranks is None:
            return []
        return [self._ranking(v, ranks, base, meta)]

    def _pair(self, v: Vote, c: int, r: int, base: dict, **kw: Any) -> PreferencePair:
        return PreferencePair(**base, chosen=self._text(v, c), rejected=self._text(v, r),
                              chosen_provenance=self._prov(v, c),
                              rejected_provenance=self._prov(v, r), **kw)

    def _ranking(self, v: Vote, ranks: list[int], base: dict, meta: dict) -> Ranking:
        k = len(v.candidate_ids)
        return Ranking(**base, responses=[self._text(v, i) for i in range(k)], ranks=ranks,
                       provenance=[self._prov(v, i) for i in range(k)], meta=meta)

    def aggregated(self, group: list[Vote]) -> list[Record]:
        v0 = group[0]
        meta = {"task_id": v0.task_id, "votes": len(group),
                "annotators": [v.pseudonym for v in group], "is_gold": v0.is_gold}
        base = self._common(v0)
        if self.kind in PAIR_KINDS:
            return self._aggregate_pair(group, base, meta)
        if self.kind == "rating":
            rating = statistics.median_low([v.answer["rating"] for v in group])
            return [Rating(**base, response=self._text(v0, 0), rating=rating,
                           provenance=self._prov(v0, 0), meta=meta)]
        k = len(v0.candidate_ids)
        wins, ties = [], []
        for v in group:
            for (i, j), label in pair_labels(self.kind, v.answer, k).items():
                if label == "tie":
                    ties.append((i, j))
                else:
                    wins.append((label, j if label == i else i))
        if not wins and not ties:
            return []
        theta = ag.bradley_terry(k, wins, ties)
        ranks = [1 + sum(o > t + 1e-9 for o in theta) for t in theta]
        return [self._ranking(v0, ranks, base, {**meta, "bt_theta": theta})]

    def _aggregate_pair(self, group: list[Vote], base: dict, meta: dict) -> list[Record]:
        labels = ["tie" if v.answer["winner"] is None else v.answer["winner"] for v in group]
        label, share = ag.majority(labels)
        if label is None:
            return []
        meta = {**meta, "agreement": share}
        if label == "tie":
            return [self._pair(group[0], 0, 1, base, tie=True, meta=meta)]
        signed = []
        for v in group:
            s = v.answer.get("strength")
            m = self.margins[s] if s is not None else 1.0
            signed.append(0.0 if v.answer["winner"] is None else
                          (m if v.answer["winner"] == label else -m))
        return [self._pair(group[0], label, 1 - label, base,
                           margin=sum(signed) / len(signed), meta=meta)]


def _bws_ranks(answer: dict, k: int) -> list[int]:
    ranks = [2] * k
    ranks[answer["best"]], ranks[answer["worst"]] = 1, k
    return ranks


RECORD_KIND = {"pairwise": "pair", "ab_eval": "pair", "ranking": "ranking", "bws": "ranking",
               "rating": "rating"}
"""Record kind (`rlhfkit.data.schemas.RECORD_TYPES`) each project kind exports."""


def write_records(records: Iterable[Record], path: str | Path, fmt: Format | None = None,
                  kind: str | None = None) -> int:
    """Write records with `rlhfkit.data.io.write_records` (atomic; JSONL, JSON, Parquet or a
    `datasets` folder, from the suffix unless `fmt` names it); return how many. `kind` (a
    record kind) gives an empty Parquet / `datasets` export its columns."""
    from rlhfkit.data import io

    records = list(records)
    io.write_records(path, records, format=fmt, kind=kind)
    return len(records)


def ab_summary(engine: Engine, project_id: int, votes: list[Vote]) -> dict[str, Any]:
    """Blind A/B result: per-model win rates with ties as ½ and 95 % intervals, Bradley–Terry
    strengths for > 2 models, and how many tasks show a model name in a response."""
    cands, _ = _candidates(engine, project_id)
    model = {cid: c.provenance.get("model") for cid, c in cands.items()}
    names = sorted({m for m in model.values() if m is not None})
    idx = {m: i for i, m in enumerate(names)}
    wins, ties = [], []
    outcome: dict[tuple[str, str], list[float]] = defaultdict(list)
    for v in votes:
        if v.answer is None or v.repeat_of is not None:
            continue
        a, b = (model[c] for c in v.candidate_ids)
        w = v.answer["winner"]
        if w is None:
            ties.append((idx[a], idx[b]))
        else:
            wins.append((idx[(a, b)[w]], idx[(a, b)[1 - w]]))
        s = 0.5 if w is None else float(w == 0)
        x, y, s = (a, b, s) if a < b else (b, a, 1 - s)
        outcome[(x, y)].append(s)
    leaked = sum(any(m.lower() in c.text.lower() for m in names) for c in cands.values())
    return {"models": names,
            "pairs": [{"model_a": x, "model_b": y, **ag.win_rate(s)} for (x, y), s in outcome.items()],
            "bradley_terry": dict(zip(names, ag.bradley_terry(len(names), wins, ties), strict=True))
            if len(names) > 2 else None,
            "responses_naming_a_model": leaked}
