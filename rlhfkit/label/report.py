"""The admin's quality report: progress, time per item, gold accuracy, agreement, position bias,
self-consistency, per-annotator flags, and for `ab_eval` projects the blind win rate.

Votes are loaded once (`load_votes`) and every figure is computed by `rlhfkit.label.agreement`.
Rankings and best–worst answers are compared pair by pair: each candidate pair (i, j) of a task
is a unit labelled `i`, `j` (the preferred candidate) or "tie", so raw agreement and the κ
statistics mean the same thing for every kind. Ratings are compared as numbers (α ordinal).
Annotators whose name starts with `judge:` are automatic judges: they are left out of the human
figures and compared with the humans instead (`judge_agreement`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from sqlalchemy import Engine, select

from rlhfkit.label import agreement as ag
from rlhfkit.label import store
from rlhfkit.label.answers import PAIR_KINDS, gold_score
from rlhfkit.label.projects import load_settings, project_row

JUDGE_PREFIX = "judge:"


@dataclass(frozen=True)
class Vote:
    """One submitted assignment, joined with its task and annotator."""

    annotator: str
    pseudonym: str
    task_id: int
    item_id: int
    candidate_ids: list[int]
    repeat_of: int | None
    is_gold: bool
    gold_answer: dict | None
    answer: dict | None
    display_order: list[int]
    seconds: float | None
    skipped: bool
    critique: str | None = None
    edited: str | None = None

    @property
    def is_judge(self) -> bool:
        return self.annotator.startswith(JUDGE_PREFIX)


def load_votes(engine: Engine, project_id: int) -> list[Vote]:
    A, T, N = store.assignment, store.task, store.annotator
    with engine.connect() as conn:
        rows = conn.execute(
        select(N.c.name, N.c.pseudonym, A.c.task_id, T.c.item_id, T.c.candidate_ids, T.c.repeat_of,
               T.c.is_gold, T.c.gold_answer, A.c.answer, A.c.display_order, A.c.elapsed_ms,
               A.c.issued_at, A.c.submitted_at, A.c.status, A.c.critique, A.c.edited)
        .join(T, T.c.id == A.c.task_id).join(N, N.c.id == A.c.annotator_id)
        .where(T.c.project_id == project_id, A.c.status.in_(("voted", "skipped")))
        .order_by(A.c.id)).all()
    return [Vote(r.name, r.pseudonym, r.task_id, r.item_id, r.candidate_ids, r.repeat_of,
                 r.is_gold, r.gold_answer, r.answer, r.display_order,
                 r.elapsed_ms / 1000 if r.elapsed_ms is not None else r.submitted_at - r.issued_at,
                 r.status == "skipped", r.critique, r.edited) for r in rows]


def pair_labels(kind: str, answer: dict, k: int) -> dict[tuple[int, int], Any]:
    """Canonical pairwise labels {(i, j), i < j: winner index or "tie"} implied by one answer
    over a task of `k` candidates. Best–worst gives best ≻ every other ≻ worst."""
    if kind in PAIR_KINDS:
        return {(0, 1): "tie" if answer["winner"] is None else answer["winner"]}
    if kind == "ranking":
        r = answer["ranks"]
        if r is None:
            return {}
        return {(i, j): "tie" if r[i] == r[j] else (i if r[i] < r[j] else j)
                for i, j in combinations(range(k), 2)}
    if kind == "bws":
        b, w = answer["best"], answer["worst"]
        out = {tuple(sorted((b, o))): b for o in range(k) if o != b}
        out.update({tuple(sorted((w, o))): o for o in range(k) if o not in (b, w)})
        return out
    return {}


def _units(kind: str, votes: list[Vote]) -> dict[Any, dict[str, Any]]:
    """unit → {annotator → label} over first-time votes (repeats are for self-consistency)."""
    units: dict[Any, dict[str, Any]] = defaultdict(dict)
    for v in votes:
        if v.repeat_of is not None or v.answer is None:
            continue
        if kind == "rating":
            units[v.task_id][v.annotator] = v.answer["rating"]
        else:
            for pair, label in pair_labels(kind, v.answer, len(v.candidate_ids)).items():
                units[(v.task_id, pair)][v.annotator] = label
    return units


def agreement_figures(kind: str, votes: list[Vote]) -> dict[str, Any]:
    """Raw agreement with and without ties, Cohen's κ (exactly 2 raters), Fleiss' κ, α, τ."""
    units = _units(kind, votes)
    raw, n_raw = ag.raw_agreement(units)
    raw_nt, n_raw_nt = ag.raw_agreement(units, exclude=frozenset({"tie"}))
    raters = sorted({r for u in units.values() for r in u})
    fleiss, n_fleiss = ag.fleiss_kappa(units)
    level = "ordinal" if kind == "rating" else "nominal"
    out = {"raw": raw, "raw_pairs": n_raw, "raw_without_ties": raw_nt,
           "raw_without_ties_pairs": n_raw_nt,
           "cohen_kappa": ag.cohen_kappa(units, *raters) if len(raters) == 2 else None,
           "fleiss_kappa": fleiss, "fleiss_units": n_fleiss,
           "krippendorff_alpha": ag.krippendorff_alpha(units, level), "alpha_level": level}
    if kind == "ranking":
        by_task: dict[int, dict[str, list[int]]] = defaultdict(dict)
        for v in votes:
            if v.repeat_of is None and v.answer and v.answer["ranks"] is not None:
                by_task[v.task_id][v.annotator] = v.answer["ranks"]
        out["kendall_tau"], out["kendall_pairs"] = ag.mean_kendall_tau(by_task)
    return out


def _same(kind: str, a: dict, b: dict, k: int) -> bool:
    return pair_labels(kind, a, k) == pair_labels(kind, b, k) if kind != "rating" else a == b


def self_consistency(kind: str, votes: list[Vote]) -> dict[str, Any]:
    """Share of repeats (order reversed) answered like the original by the same annotator."""
    first = {(v.annotator, v.task_id): v.answer for v in votes if v.answer is not None}
    same = [_same(kind, first[(v.annotator, v.repeat_of)], v.answer, len(v.candidate_ids))
            for v in votes
            if v.repeat_of is not None and v.answer is not None
            and (v.annotator, v.repeat_of) in first]
    return {"value": sum(same) / len(same) if same else None, "n": len(same)}


def _position_bias(kind: str, votes: list[Vote]) -> dict[str, Any]:
    """`agreement.position_bias` over the votes with a single winner: did the first-shown
    candidate win? Pairwise: decisive votes (chance ½). Best–worst: picked as best (chance 1/k).
    Ranking: ranked best alone, over the rankings with one candidate on top (chance 1/k); a tie on
    top is left out, as a pairwise tie is. Ratings have no winner."""
    answered = [v for v in votes if v.answer is not None]
    if kind in PAIR_KINDS:
        counted = [(v.answer["first_shown_won"], v) for v in answered if v.answer["winner"] is not None]
    elif kind == "bws":
        counted = [(v.answer["best"] == v.display_order[0], v) for v in answered]
    elif kind == "ranking":
        counted = [(v.answer["ranks"][v.display_order[0]] == 1, v) for v in answered
                   if v.answer["ranks"] is not None and v.answer["ranks"].count(1) == 1]
    else:
        counted = []
    return ag.position_bias([won for won, _ in counted], [len(v.display_order) for _, v in counted])


def _gold(kind: str, votes: list[Vote]) -> dict[str, Any]:
    scores = [s for v in votes if v.is_gold and v.answer is not None
              for s in [gold_score(kind, v.answer, v.gold_answer)] if s is not None]
    return {"accuracy": sum(scores) / len(scores) if scores else None, "n": len(scores)}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def annotator_rows(kind: str, votes: list[Vote], settings: Any, active: dict[str, bool]) -> list[dict]:
    by: dict[str, list[Vote]] = defaultdict(list)
    for v in votes:
        by[v.annotator].append(v)
    units = _units(kind, votes)
    rows = []
    for name in sorted(active):
        mine = by.get(name, [])
        voted = [v for v in mine if not v.skipped]
        gold = _gold(kind, voted)
        med = _median([v.seconds for v in voted if v.seconds is not None])
        flags = []
        if gold["n"] >= settings.min_gold and gold["accuracy"] < settings.gold_threshold:
            flags.append("low_gold_accuracy")
        if med is not None and med < settings.min_seconds:
            flags.append("fast")
        others = {u: {"me": r[name], "others": [y for a, y in r.items() if a != name]}
                  for u, r in units.items() if name in r and len(r) > 1}
        agree = [y == o["me"] for o in others.values() for y in o["others"]]
        rows.append({
            "annotator": name, "pseudonym": mine[0].pseudonym if mine else None,
            "active": active[name], "votes": len(voted), "skips": len(mine) - len(voted),
            "median_seconds": med, "gold_accuracy": gold["accuracy"], "gold_n": gold["n"],
            "position_bias": _position_bias(kind, voted)["p_first_wins"],
            "self_consistency": self_consistency(kind, voted)["value"],
            "agreement_with_others": sum(agree) / len(agree) if agree else None,
            "flags": flags})
    return rows


def project_report(engine: Engine, name: str) -> dict[str, Any]:
    """Everything the admin page shows for one project (see module docstring)."""
    T, N = store.task, store.annotator
    with engine.connect() as conn:
        proj = project_row(conn, name)
        tasks = conn.execute(select(T.c.id, T.c.is_gold, T.c.repeat_of, T.c.overlap)
                             .where(T.c.project_id == proj.id)).all()
        active = dict(conn.execute(select(N.c.name, N.c.active).where(
            N.c.project_id == proj.id)).all())
    settings = load_settings(proj.settings)
    all_votes = load_votes(engine, proj.id)
    votes = [v for v in all_votes if not v.is_judge]
    voted = [v for v in votes if not v.skipped]
    per_task = defaultdict(int)
    for v in voted:
        per_task[v.task_id] += 1
    regular = [t for t in tasks if not t.is_gold and t.repeat_of is None]
    report = {
        "project": proj.name, "kind": proj.kind, "tasks": len(regular),
        "gold_tasks": sum(t.is_gold for t in tasks),
        "tasks_complete": sum(per_task[t.id] >= t.overlap for t in regular),
        "votes": len(voted), "skips": len(votes) - len(voted),
        "annotators": sum(not n.startswith(JUDGE_PREFIX) for n in active),
        "median_seconds": _median([v.seconds for v in voted if v.seconds is not None]),
        "agreement": agreement_figures(proj.kind, voted),
        "position_bias": _position_bias(proj.kind, voted),
        "self_consistency": self_consistency(proj.kind, voted),
        "gold": _gold(proj.kind, voted),
        "annotator_stats": annotator_rows(proj.kind, votes, settings,
                                          {n: a for n, a in active.items()
                                           if not n.startswith(JUDGE_PREFIX)}),
        "judge_agreement": judge_agreement(proj.kind, all_votes),
    }
    if proj.kind == "ab_eval":
        from rlhfkit.label.export import ab_summary

        report["ab_eval"] = ab_summary(engine, proj.id, voted)
    return report


def judge_agreement(kind: str, votes: list[Vote]) -> dict[str, Any] | None:
    """Raw agreement of each automatic judge with the humans on the tasks both labelled."""
    units = _units(kind, [v for v in votes if not v.skipped])
    judges = sorted({v.annotator for v in votes if v.is_judge})
    if not judges:
        return None
    out = {}
    for j in judges:
        pairs = [(r[j], y) for r in units.values() if j in r
                 for a, y in r.items() if not a.startswith(JUDGE_PREFIX)]
        no_ties = [(a, b) for a, b in pairs if "tie" not in (a, b)]
        out[j] = {"raw": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
                  "raw_without_ties": (sum(a == b for a, b in no_ties) / len(no_ties)
                                       if no_ties else None), "pairs": len(pairs)}
    return out
