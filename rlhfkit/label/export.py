"""Export votes as the preference records the RM trainer reads, and the blind A/B summary.

`raw`: one record per annotator per task, nothing merged (OA #3389: always keep raw votes):
- pairwise / ab_eval → `PreferencePair` (tie / both-bad as `tie=True`; margin from the strength
  level via `strength_margins`);
- ranking → `Ranking` (not-rankable answers are left out and counted); best–worst → `Ranking`
  with best = 1, the others tied at 2, worst = K;
- rating → `Rating`;
- an edited response is an improvement on what the annotator put first (the winner, the rank-1
  group, the best; every shown response after a tie, both-bad or not-rankable), so it adds one
  comparison edit ≻ that response for each of them, in the project's record kind
  (`PreferencePair`, or a two-response `Ranking`), `meta.source = "edit"`. A `Rating` cannot
  hold a comparison: a rating task's edit travels in its record's `meta.edited`.
`aggregated`: one record per task:
- pairwise → majority label; no majority (a split such as 1–1) → a tie with `meta.split`;
  margin = mean signed margin over the votes that have one (+m for the winner, −m against, 0 for
  a tie; m = the strength margin; in a project without strength m = 1 for every vote, which
  makes it the vote-share margin (n_win − n_lose) / n); None when no decisive vote has one;
- ranking / best–worst → ranks by Bradley–Terry strength over the implied pairwise votes (a
  split gives tied ranks); a task whose every vote is not-rankable is left out and counted;
- rating → the lower median rating per response.
Annotators appear only by pseudonym. Provenance travels with every record (admins only).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Export:
    """An export's records and what had no record (so a caller can say so, never drop silently)."""

    records: list[Record]
    left_out: int
    """Not-rankable votes (raw) or tasks whose every vote was not-rankable (aggregated)."""
    left_out_what: str
    """What `left_out` counts, in words, e.g. for `f"left out {n} {left_out_what}"`."""


def export_project(engine: Engine, project: str, what: Literal["raw", "aggregated"] = "raw",
                   include_judges: bool = False) -> Export:
    """Records of `project` (see module docstring) and how many had none; judges (`judge:`
    names) only on request."""
    with engine.connect() as conn:
        proj = project_row(conn, project)
    settings = load_settings(proj.settings)
    votes = [v for v in load_votes(engine, proj.id)
             if not v.skipped and v.answer is not None
             and (include_judges or not v.annotator.startswith(JUDGE_PREFIX))]
    cands, items = _candidates(engine, proj.id)
    ctx = _Ctx(proj.kind, settings.strength_margins, settings.with_strength, cands, items)
    if what == "raw":
        records = [r for v in votes for r in ctx.raw(v)]
        unrankable = sum(v.answer.get("not_rankable", False) for v in votes)
        return Export(records, unrankable, "not-rankable votes without a ranking record")
    by_task: dict[int, list[Vote]] = defaultdict(list)
    for v in votes:
        if v.repeat_of is None:
            by_task[v.task_id].append(v)
    per_task = [ctx.aggregated(group) for group in by_task.values()]
    return Export([r for rs in per_task for r in rs], sum(not rs for rs in per_task),
                  "tasks whose every vote was not-rankable")


def export_records(engine: Engine, project: str, what: Literal["raw", "aggregated"] = "raw",
                   include_judges: bool = False) -> list[Record]:
    """The records of `export_project` alone (its `left_out` count is not reported)."""
    return export_project(engine, project, what, include_judges).records


class _Ctx:
    """Turns votes of one project into records (texts and provenance looked up by id)."""

    def __init__(self, kind: str, margins: tuple[float, ...], with_strength: bool, cands: dict,
                 items: dict) -> None:
        self.kind, self.margins, self.with_strength = kind, margins, with_strength
        self.cands, self.items = cands, items

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
        # Votes stored before blank edits were refused may hold one: it carries nothing.
        edited = v.edited if v.edited and v.edited.strip() else None
        if self.kind == "rating":
            return [Rating(**base, response=self._text(v, 0), rating=a["rating"],
                           provenance=self._prov(v, 0),
                           meta={**meta, "edited": edited} if edited else meta)]
        out: list[Record] = []
        if self.kind in PAIR_KINDS:
            w = a["winner"]
            c, r = (w, 1 - w) if w is not None else (0, 1)
            margin = self.margins[a["strength"]] if a.get("strength") is not None else None
            out.append(self._pair(v, c, r, base, margin=margin, strength=a["strength"],
                                  tie=w is None, meta={**meta, "both_bad": a["both_bad"]}))
        else:
            ranks = a["ranks"] if self.kind == "ranking" else _bws_ranks(a, len(v.candidate_ids))
            if ranks is not None:
                out.append(self._ranking(v, ranks, base, meta))
        if edited:
            # The edit's records compare two texts: the vote's shown order does not apply.
            out += self._edits(v, edited, base, {**meta, "shown_order": None, "source": "edit"})
        return out

    def _edits(self, v: Vote, edited: str, base: dict, meta: dict) -> list[Record]:
        """edit ≻ each response the annotator put first, as a pair or a two-response ranking. An
        edit identical to any shown response is no edit (pasting the other response back would
        otherwise read as a preference against the vote)."""
        k = len(v.candidate_ids)
        if edited.strip() in {self._text(v, i).strip() for i in range(k)}:
            return []
        out: list[Record] = []
        for i in _put_first(self.kind, v.answer, k):
            if self.kind in PAIR_KINDS:
                out.append(PreferencePair(**base, chosen=edited, rejected=self._text(v, i),
                                          rejected_provenance=self._prov(v, i), meta=meta))
            else:
                out.append(Ranking(**base, responses=[edited, self._text(v, i)], ranks=[1, 2],
                                   provenance=[Provenance(), self._prov(v, i)], meta=meta))
        return out

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
            return [self._aggregate_pair(group, base, meta)]
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
        if not wins and not ties:  # every vote not-rankable: counted by `export_project`
            return []
        theta = ag.bradley_terry(k, wins, ties)
        ranks = [1 + sum(o > t + 1e-9 for o in theta) for t in theta]
        return [self._ranking(v0, ranks, base, {**meta, "bt_theta": theta})]

    def _aggregate_pair(self, group: list[Vote], base: dict, meta: dict) -> PreferencePair:
        labels = ["tie" if v.answer["winner"] is None else v.answer["winner"] for v in group]
        label, share = ag.majority(labels)
        # No majority (1–1, or 1 each for A, B and tie): the honest aggregate is a tie, as
        # Bradley–Terry with ties reads opposite votes; `split` tells it from a voted tie.
        meta = {**meta, "agreement": share, "split": label is None}
        if label is None or label == "tie":
            return self._pair(group[0], 0, 1, base, tie=True, meta=meta)
        return self._pair(group[0], label, 1 - label, base, margin=self._margin(group, label),
                          meta=meta)

    def _margin(self, group: list[Vote], label: int) -> float | None:
        """Mean signed margin over the votes that have one: +m for `label`, −m against, 0 for a
        tie. m = the strength margin; 1 for every vote when the project collects no strength.
        A decisive vote without a strength has no margin (not the strongest); None when no
        decisive vote has one."""
        signed, decisive = [], 0
        for v in group:
            w, s = v.answer["winner"], v.answer.get("strength")
            if w is None:
                signed.append(0.0)
                continue
            if self.with_strength and s is None:
                continue
            m = self.margins[s] if self.with_strength else 1.0
            signed.append(m if w == label else -m)
            decisive += 1
        return sum(signed) / len(signed) if decisive else None


def _put_first(kind: str, answer: dict, k: int) -> list[int]:
    """Candidates the annotator put first: the winner, the rank-1 group, the best; all of them
    after a tie, both-bad or not-rankable answer (an edit then improves on every one)."""
    if kind in PAIR_KINDS:
        return [answer["winner"]] if answer["winner"] is not None else list(range(k))
    if kind == "ranking":
        ranks = answer["ranks"]
        return [i for i in range(k) if ranks is None or ranks[i] == 1]
    if kind == "bws":
        return [answer["best"]]
    return [0]


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
