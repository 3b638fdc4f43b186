"""Which task and which shown order `next_task` hands out: rotations after skips and expiries
(also under concurrent claims), repeats and gold tasks at the end of the queue, and the ranking
position bias of the report. Runs on SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import random
import threading

import pytest

from labelkit import candidate_sets, make_setup
from sqlalchemy import select

from rlhfkit.label import projects, store
from rlhfkit.label.answers import SkipIn, VoteIn
from rlhfkit.label.assign import authenticate, least_used_rotation, next_task, skip_task, submit_vote
from rlhfkit.label.report import project_report

NOW = 1_000_000.0
MINUTE = 60.0


def _who(engine, token):
    with engine.connect() as conn:
        return authenticate(conn, token)


def _fetch(engine, who, now=NOW):
    with store.write_transaction(engine) as conn:
        return next_task(conn, who, now=now)


def _vote(engine, who, task_id, now=NOW, **answer):
    with store.write_transaction(engine) as conn:
        submit_vote(conn, who, task_id, VoteIn(**answer), now=now)


def _skip(engine, who, task_id, now=NOW):
    with store.write_transaction(engine) as conn:
        skip_task(conn, who, task_id, SkipIn(reason="unsure"), now=now)


def _live_first_shown(engine) -> dict[int, list[int]]:
    """task id → first-shown candidate of each live (open or voted) assignment."""
    A = store.assignment
    with engine.connect() as conn:
        rows = conn.execute(select(A.c.task_id, A.c.display_order)
                            .where(A.c.status.in_(("open", "voted")))).all()
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(r.task_id, []).append(r.display_order[0])
    return out


def _vote_until_done(engine, who, answer) -> list[dict]:
    shown, task = [], _fetch(engine, who)
    while task is not None:
        shown.append(task)
        _vote(engine, who, task["task_id"], **answer)
        task = _fetch(engine, who)
    return shown


def _tasks(engine) -> dict[int, object]:
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(store.task)).all()}


# ------------------------------------------------------------------------------------ rotations
def test_least_used_rotation_by_hand():
    base = [2, 0, 1]  # rotation r shows base[r] first
    assert least_used_rotation(base, []) == 0
    assert least_used_rotation(base, [2]) == 1
    assert least_used_rotation(base, [2, 1]) == 1  # candidate 0 (rotation 1) unused
    assert least_used_rotation(base, [0, 1]) == 0
    assert least_used_rotation(base, [2, 0, 1, 2, 1]) == 1  # 0 used once, the others twice


def test_a_skipped_rotation_is_handed_out_again_not_a_live_one(engine):
    s = make_setup(engine, n=1, annotators=("alice", "bob", "carol"))  # k = 2, overlap 2
    alice, bob, carol = (_who(engine, s.tokens[n]) for n in ("alice", "bob", "carol"))
    first = _fetch(engine, alice)
    seen_by_bob = _fetch(engine, bob)
    _skip(engine, alice, first["task_id"])
    seen_by_carol = _fetch(engine, carol)
    assert seen_by_carol["task_id"] == seen_by_bob["task_id"]
    assert seen_by_carol["responses"] == first["responses"]  # alice's freed rotation
    assert seen_by_carol["responses"] != seen_by_bob["responses"]
    assert sorted(_live_first_shown(engine)[first["task_id"]]) == [0, 1]


def test_an_expired_rotation_is_handed_out_again_not_a_live_one(engine):
    ttl = 30.0
    s = make_setup(engine, n=1, annotators=("alice", "bob", "carol"),
                   settings=projects.ProjectSettings(overlap=2, assignment_ttl_minutes=ttl))
    alice, bob, carol = (_who(engine, s.tokens[n]) for n in ("alice", "bob", "carol"))
    first = _fetch(engine, alice, now=NOW)
    seen_by_bob = _fetch(engine, bob, now=NOW + ttl * MINUTE - 1)
    seen_by_carol = _fetch(engine, carol, now=NOW + ttl * MINUTE + 1)  # alice's lease is over
    assert seen_by_carol["task_id"] == seen_by_bob["task_id"]
    assert seen_by_carol["responses"] != seen_by_bob["responses"]
    assert sorted(_live_first_shown(engine)[first["task_id"]]) == [0, 1]


def test_live_assignments_never_share_a_first_candidate_under_random_claims_and_skips(engine):
    """Invariant: with overlap ≤ k, the live assignments of a task show distinct candidates
    first, whatever the interleaving of claims, votes and skips (seeded random walk)."""
    names = tuple(f"a{i}" for i in range(8))
    s = make_setup(engine, n=4, k=3, annotators=names, kind="ranking",
                   settings=projects.ProjectSettings(overlap=3))
    people = [_who(engine, s.tokens[n]) for n in names]
    holding: dict[int, int] = {}  # annotator id → open task id
    rng = random.Random(0)
    skips = 0
    for _ in range(120):
        who = rng.choice(people)
        if who.id in holding:
            task_id = holding.pop(who.id)
            if rng.random() < 0.5:
                _skip(engine, who, task_id)
                skips += 1
            else:
                _vote(engine, who, task_id, ranking=[[1], [2], [3]])
        else:
            task = _fetch(engine, who)
            if task is not None:
                holding[who.id] = task["task_id"]
        for task_id, firsts in _live_first_shown(engine).items():
            assert len(firsts) == len(set(firsts)), (task_id, firsts)
    assert skips > 10  # the walk did exercise freed slots


def test_concurrent_claims_after_a_skip_take_the_unused_rotations(engine):
    """Two claimers race for the two free slots of a task one of whose rotations was freed by a
    skip: on PostgreSQL the second waits for the first's row lock and must then see its order."""
    names = ("p0", "p1", "p2", "p3")
    s = make_setup(engine, n=1, k=3, kind="ranking", annotators=names,
                   settings=projects.ProjectSettings(overlap=3))
    p0, p1, p2, p3 = (_who(engine, s.tokens[n]) for n in names)
    task_id = _fetch(engine, p0)["task_id"]
    _fetch(engine, p1)
    _skip(engine, p0, task_id)
    start = threading.Barrier(2)
    handed: list[int | None] = []

    def claim(who):
        start.wait(10)
        with engine.connect() as conn, conn.begin():
            task = next_task(conn, who, now=NOW)
        handed.append(None if task is None else task["task_id"])

    threads = [threading.Thread(target=claim, args=(who,)) for who in (p2, p3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert handed == [task_id, task_id]
    assert sorted(_live_first_shown(engine)[task_id]) == [0, 1, 2]


# ------------------------------------------------------------------------ end of the queue
def test_pending_repeats_are_shown_when_no_new_task_is_left(engine):
    s = make_setup(engine, n=3, annotators=("alice",), settings=projects.ProjectSettings(
        overlap=1, repeat_share=0.9, repeat_gap=5, with_strength=False))
    alice = _who(engine, s.tokens["alice"])
    shown = _vote_until_done(engine, alice, {"choice": "1"})
    tasks = _tasks(engine)
    repeats = [t for t in shown if tasks[t["task_id"]].repeat_of is not None]
    assert repeats, "the gap (5) is longer than the queue (3): only the fallback shows repeats"
    A = store.assignment
    with engine.connect() as conn:
        pending = conn.execute(select(A.c.id).where(A.c.repeat_after.is_not(None))).all()
    assert pending == []
    first_texts = {t["task_id"]: [r["text"] for r in t["responses"]] for t in shown}
    for again in repeats:
        original = first_texts[tasks[again["task_id"]].repeat_of]
        assert [r["text"] for r in again["responses"]] == original[::-1]


def test_unseen_gold_tasks_are_shown_when_no_regular_task_is_left(engine):
    n_regular, n_gold = 6, 4
    sets = candidate_sets(n_regular + n_gold, gold={i: [1.0, 0.0] for i in range(n_gold)})
    s = make_setup(engine, sets=sets, annotators=("alice", "bob"), settings=projects.ProjectSettings(
        overlap=1, gold_share=0.05, with_strength=False))
    tasks = _tasks(engine)
    for name in ("alice", "bob"):  # gold tasks have no overlap limit: each annotator sees all
        shown = _vote_until_done(engine, _who(engine, s.tokens[name]), {"choice": "1"})
        gold = {t["task_id"] for t in shown if tasks[t["task_id"]].is_gold}
        assert gold == {t.id for t in tasks.values() if t.is_gold}
        assert len(gold) == n_gold
    rep = project_report(engine, "proj")
    assert rep["tasks_complete"] == n_regular and rep["gold"]["n"] == 2 * n_gold


# ------------------------------------------------------------------------------ position bias
def test_ranking_position_bias_counts_the_first_shown_candidate_ranked_best_alone(engine):
    s = make_setup(engine, kind="ranking", n=3, k=3, annotators=("alice",),
                   settings=projects.ProjectSettings(overlap=1))
    alice = _who(engine, s.tokens["alice"])
    rankings = [[[1], [2], [3]],  # first shown ranked best alone: a first-position win
                [[2], [1], [3]],  # another ranked best: a loss
                [[1, 2], [3]]]    # a tie on top: left out, as a pairwise tie is
    for ranking in rankings:
        task = _fetch(engine, alice)
        _vote(engine, alice, task["task_id"], ranking=ranking)
    rep = project_report(engine, "proj")
    assert (rep["position_bias"]["p_first_wins"], rep["position_bias"]["n"]) == (0.5, 2)
    assert rep["position_bias"]["chance"] == pytest.approx(1 / 3)  # three shown each time
    assert rep["annotator_stats"][0]["position_bias"] == 0.5
