"""The annotator's hot path: authenticate, hand out the next task, record a vote or a skip.

Every function takes an open transaction (`Connection` from `engine.begin()`), so a vote and the
claim of the next task commit together and the acknowledgement is sent only after COMMIT.

Which task comes next, in this order:
1. the annotator's own open assignment (fetching twice returns the same task and order);
2. a due repeat: an earlier task of theirs shown again with the order reversed;
3. a gold task, with probability `gold_share` per new item (seeded);
4. the oldest open task they have not seen; claiming it bumps `n_assigned` under
   `WHERE is_open`, so two claimers can never push a task past its overlap;
5. when no regular task is left for them: an unseen gold task, then a pending repeat whose gap
   has not run yet (so repeats drawn near the end of the queue are still shown).

Shown order: a seeded base permutation per task, rotated so that the candidate shown first is
the one shown first least often among the task's live (open or voted) assignments, the lowest
rotation on a tie. Without skips or expiries that is rotation k for the k-th annotator; a skipped
or expired assignment's rotation is handed out again. So while a task has at most K (the number
of candidates) live assignments, each shows a different candidate first (each candidate exactly
once at K), and position effects cancel task by task. The order is stored on the assignment and
never changes for that annotator, so a late answer to an expired assignment keeps its old order
and may repeat the rotation of whoever took the slot meanwhile.

Leases: before a hand-out (at most once a second per project and process), open assignments of
the project older than `assignment_ttl_minutes` are marked `expired` and their overlap slots
given back (the owner's own stale one included, so after a reload they get a fresh task). A late
answer to an expired assignment is kept if the task still has room for it (it re-takes a slot
under the same `WHERE is_open` guard as a claim), and refused with `AssignmentExpired` (409) when
others have filled the task meanwhile; either way the overlap is never exceeded. Swapped-order repeats are
private to their annotator, so they expire without freeing anything and a late answer is kept.
"""

from __future__ import annotations

import random
import time
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (JSON, Connection, Engine, and_, bindparam, exists, func, insert, or_, select,
                        update)

from rlhfkit.label import store
from rlhfkit.label.prepared import Prepared
from rlhfkit.label.answers import SkipIn, VoteIn, canonical_answer
from rlhfkit.label.projects import hash_token, load_settings, log_event

A, T, C, IT, N, P = (store.assignment, store.task, store.candidate, store.item, store.annotator,
                    store.project)
CLAIM_RETRIES = 20
"""Attempts to claim an open task when concurrent claimers keep taking the one we picked."""

# Statements are built once and run as `Prepared` (compiled once per dialect, executed on the
# driver's cursor): this path runs once per vote.
_ACTIVE = Prepared(select(N.c.id, N.c.active).where(N.c.token_hash == bindparam("b_hash")))
_PROFILE = Prepared(
    select(N.c.id, N.c.pseudonym, N.c.name, P.c.id.label("pid"), P.c.name.label("pname"), P.c.kind,
           P.c.seed, P.c.guidelines_md, P.c.settings)
    .join(P, P.c.id == N.c.project_id).where(N.c.id == bindparam("b_aid")))
_OPEN = Prepared(
    select(A.c.task_id, A.c.display_order, A.c.seq)
    .where(A.c.annotator_id == bindparam("b_aid"), A.c.status == "open").order_by(A.c.seq).limit(1))
_STALE = Prepared(
    select(A.c.id, A.c.task_id, A.c.annotator_id, T.c.repeat_of).join(T, T.c.id == A.c.task_id)
    .where(A.c.status == "open", A.c.issued_at < bindparam("b_cutoff"),
           T.c.project_id == bindparam("b_pid")))
_EXPIRE = Prepared(update(A).where(A.c.id == bindparam("b_id"), A.c.status == "open")
                   .values(status="expired"))
_RELEASE = Prepared(update(T).where(T.c.id == bindparam("b_tid"))
                    .values(n_assigned=T.c.n_assigned - 1, is_open=True))
_MAX_SEQ = Prepared(select(func.max(A.c.seq)).where(A.c.annotator_id == bindparam("b_aid")))
_Q = T.alias("q")
_PICK_SELECT = {gold: select(_Q.c.id).where(
    _Q.c.project_id == bindparam("b_pid"), _Q.c.is_open.is_(True), _Q.c.is_gold.is_(gold),
    _Q.c.repeat_of.is_(None),
    ~exists().where(A.c.task_id == _Q.c.id, A.c.annotator_id == bindparam("b_aid")),
).order_by(_Q.c.id).limit(1) for gold in (False, True)}
_PICK = {gold: Prepared(pick) for gold, pick in _PICK_SELECT.items()}
_LIVE_ORDERS = Prepared(select(A.c.display_order).where(
    A.c.task_id == bindparam("b_tid"), or_(A.c.status == "open", A.c.status == "voted")))
_BUMP_VALUES = {"n_assigned": T.c.n_assigned + 1, "is_open": (T.c.n_assigned + 1) < T.c.overlap}
_BUMP = Prepared(update(T).where(T.c.id == bindparam("b_tid"), T.c.is_open.is_(True))
                 .values(_BUMP_VALUES).returning(T.c.n_assigned))


def _claim_by(pick) -> Prepared:
    """Pick and bump in one statement (the pick is a subquery of the UPDATE; `q` aliases the task
    table so the subquery is not correlated with the row being updated)."""
    return Prepared(update(T).where(T.c.id == pick.scalar_subquery(), T.c.is_open.is_(True))
                    .values(_BUMP_VALUES).returning(T.c.id, T.c.candidate_ids, T.c.n_assigned))


_CLAIM = {gold: _claim_by(pick) for gold, pick in _PICK_SELECT.items()}
# The same claim passing over tasks that concurrent transactions hold locked (PostgreSQL's
# SKIP LOCKED; SQLite renders no FOR UPDATE and has one writer at a time anyway). Without it
# every claimer picks the same lowest open task and queues on its row lock until the holder's
# commit, fsync included, so claims were serial whatever the number of connections.
_CLAIM_SKIPPING_LOCKED = {gold: _claim_by(pick.with_for_update(skip_locked=True))
                          for gold, pick in _PICK_SELECT.items()}
_INSERT_ASSIGNMENT = Prepared(insert(A).values(
    annotator_id=bindparam("annotator_id"), task_id=bindparam("task_id"), seq=bindparam("seq"),
    display_order=bindparam("display_order", type_=JSON), status=bindparam("status"),
    issued_at=bindparam("issued_at")))
_VIEW = Prepared(
    select(T.c.candidate_ids, IT.c.prompt, C.c.id, C.c.text)
    .join(IT, IT.c.id == T.c.item_id).join(C, C.c.item_id == IT.c.id).where(T.c.id == bindparam("b_tid")))
_ASSIGNMENT = Prepared(
    select(A.c.id, A.c.status, A.c.display_order, A.c.seq, T.c.is_gold, T.c.repeat_of)
    .join(T, T.c.id == A.c.task_id)
    .where(A.c.annotator_id == bindparam("b_aid"), A.c.task_id == bindparam("b_tid")))
_VOTE = Prepared(update(A).where(A.c.id == bindparam("b_id"), A.c.status == bindparam("b_status")).values(
    status="voted", submitted_at=bindparam("v_at"), elapsed_ms=bindparam("v_ms"),
    shown_answer=bindparam("v_shown", type_=JSON), answer=bindparam("v_answer", type_=JSON),
    critique=bindparam("v_critique"), edited=bindparam("v_edited"),
    repeat_after=bindparam("v_repeat")))
_PROGRESS = Prepared(select(A.c.status, func.count()).where(A.c.annotator_id == bindparam("b_aid"))
                     .group_by(A.c.status))


class NotFound(LookupError):
    """The task does not exist or is not this annotator's (404, so ids reveal nothing)."""


class AlreadySubmitted(RuntimeError):
    """The annotator has already voted on or skipped this task (409)."""


class AssignmentExpired(RuntimeError):
    """The assignment outlived its lease and others took the task's slots meanwhile (409)."""


@dataclass(frozen=True)
class Annotator:
    """The authenticated annotator and the project they work on."""

    id: int
    pseudonym: str
    name: str
    project_id: int
    project_name: str
    kind: str
    seed: int
    guidelines_md: str
    settings: Any


def authenticate(conn: Connection, token: str,
                 known: dict[int, Annotator] | None = None) -> Annotator | None:
    """The active annotator holding `token`, or None.

    `known`: annotators met before, by id, filled here (the server keeps one per app). Nothing
    of an annotator or project row ever changes after it is written except `active`, and that is
    read from the database on every call, so a revocation (from the API or the CLI, in any
    process) applies to the very next request; the cache saves the join, fetching the guidelines
    and parsing the settings on every request.
    """
    row = _ACTIVE(conn, {"b_hash": hash_token(token)}).first()
    if row is None or not row.active:
        return None
    who = None if known is None else known.get(row.id)
    if who is None:
        p = _PROFILE(conn, {"b_aid": row.id}).one()
        who = Annotator(p.id, p.pseudonym, p.name, p.pid, p.pname, p.kind, p.seed,
                        p.guidelines_md, load_settings(p.settings))
        if known is not None:
            known[row.id] = who
    return who


def base_order(seed: int, task_id: int, k: int) -> list[int]:
    """The task's seeded base permutation of its k candidates; each assignment shows a rotation
    of it (`least_used_rotation`)."""
    base = list(range(k))
    random.Random(f"{seed}:{task_id}").shuffle(base)
    return base


def least_used_rotation(base: list[int], shown_first: Iterable[int]) -> int:
    """The rotation r of `base` (shown first: `base[r]`) whose first candidate occurs least often
    in `shown_first` (the first-shown candidates of the task's live assignments), lowest r on a
    tie. Handing out rotations 0, 1, … in turn is a special case; unlike a slot counter, a rotation
    freed by a skip or an expiry is reused instead of being given twice."""
    uses = Counter(shown_first)
    return min(range(len(base)), key=lambda r: (uses[base[r]], r))


def _uniform(*key: object) -> float:
    """A reproducible U(0, 1) draw for `key` (string seeding hashes with SHA-512)."""
    return random.Random(":".join(map(str, key))).random()


LEASE_SWEEP_INTERVAL_S = 1.0
"""A process sweeps a project's stale leases at most this often: leases last minutes, so a
second's delay changes nothing, and the sweep's query was 5 % of a vote's CPU."""

_last_sweep: weakref.WeakKeyDictionary[Engine, dict[int, float]] = weakref.WeakKeyDictionary()
"""Per engine (one store) and project: the clock time of this process's last sweep."""


def expire_stale(conn: Connection, who: Annotator, now: float) -> int:
    """Expire the project's open assignments older than its lease and give their slots back;
    return how many expired. The `WHERE status = 'open'` guard makes a concurrent sweep (or a
    vote landing at the same moment) win or lose each row exactly once. Skipped (0) when this
    process swept the project less than `LEASE_SWEEP_INTERVAL_S` ago by `now`."""
    ttl = who.settings.assignment_ttl_minutes
    if ttl <= 0:
        return 0
    swept = _last_sweep.setdefault(conn.engine, {})
    last = swept.get(who.project_id)
    if last is not None and 0.0 <= now - last < LEASE_SWEEP_INTERVAL_S:
        return 0
    swept[who.project_id] = now
    n = 0
    for row in _STALE(conn, {"b_cutoff": now - 60.0 * ttl, "b_pid": who.project_id}).all():
        if _EXPIRE(conn, {"b_id": row.id}).rowcount != 1:
            continue
        if row.repeat_of is None:
            _RELEASE(conn, {"b_tid": row.task_id})
        log_event(conn, "server", "expire", who.project_id,
                  {"assignment_id": row.id, "task_id": row.task_id,
                   "annotator_id": row.annotator_id})
        n += 1
    return n


def next_task(conn: Connection, who: Annotator, after_seq: int | None = None,
              now: float | None = None) -> dict[str, Any] | None:
    """The task to show now (claiming a new one when needed), or None when nothing is left.

    `after_seq`: the seq of the assignment just submitted, when the caller knows it. An
    annotator holds at most one open assignment (an open one is always handed out before a
    new claim, and stale ones are expired before either), so right after a submit none is open
    and the next seq is `after_seq + 1`. `now`: the clock (seconds since the epoch; default
    `time.time()`), for the lease and the issue time.
    """
    now = time.time() if now is None else now
    expire_stale(conn, who, now)
    if after_seq is None:
        row = _OPEN(conn, {"b_aid": who.id}).first()
        if row is not None:
            return _task_view(conn, who, row.task_id, row.display_order, row.seq)
        after_seq = _MAX_SEQ(conn, {"b_aid": who.id}).scalar() or 0
    seq = after_seq + 1
    repeats, gold_share = who.settings.repeat_share > 0, who.settings.gold_share
    gold_drawn = gold_share > 0 and _uniform(who.seed, "gold", who.id, seq) < gold_share
    claimed = _claim_repeat(conn, who, seq, now, due_only=True) if repeats else None
    if claimed is None and gold_drawn:
        claimed = _claim(conn, who, seq, now, gold=True)
    if claimed is None:
        claimed = _claim(conn, who, seq, now, gold=False)
    # The regular queue ran out for this annotator: unseen gold tasks, then repeats not yet due,
    # come before "nothing left" (else they would never be shown).
    if claimed is None and gold_share > 0 and not gold_drawn:
        claimed = _claim(conn, who, seq, now, gold=True)
    if claimed is None and repeats:
        claimed = _claim_repeat(conn, who, seq, now, due_only=False)
    if claimed is None:
        return None
    task_id, order = claimed
    return _task_view(conn, who, task_id, order, seq)


def _claim(conn: Connection, who: Annotator, seq: int, now: float,
           gold: bool) -> tuple[int, list[int]] | None:
    params = {"b_pid": who.project_id, "b_aid": who.id}
    got = _CLAIM_SKIPPING_LOCKED[gold](conn, params).first()
    retries = 0
    while got is None:
        # Nothing unlocked to claim: either nothing is left for this annotator, or the open
        # tasks are being claimed right now (a locked one may keep a free slot, or be released
        # by a rollback): then claim waiting on the row lock, as often as concurrent claimers
        # fill the task we picked before our UPDATE ran.
        if retries == CLAIM_RETRIES or _PICK[gold](conn, params).first() is None:
            return None
        got = _CLAIM[gold](conn, params).first()
        retries += 1
    base = base_order(who.seed, got.id, len(got.candidate_ids))
    rotation = 0
    # `n_assigned` counts the task's live assignments, ours included: only when others are live
    # is there a rotation to avoid. Our claim holds the task row (the UPDATE's lock on
    # PostgreSQL, the writer lock on SQLite) until COMMIT, so no concurrent claim of this task
    # can be missing from what we read here.
    if got.n_assigned > 1:
        live = _LIVE_ORDERS(conn, {"b_tid": got.id}).all()
        rotation = least_used_rotation(base, (row.display_order[0] for row in live))
    order = base[rotation:] + base[:rotation]
    _insert_assignment(conn, who, got.id, seq, order, now)
    return got.id, order


def _claim_repeat(conn: Connection, who: Annotator, seq: int, now: float,
                  due_only: bool) -> tuple[int, list[int]] | None:
    """Show the annotator's oldest pending repeat: only one whose gap has run (`due_only`), or
    any (their queue of new tasks is empty)."""
    pending = [A.c.annotator_id == who.id, A.c.repeat_after.is_not(None)]
    if due_only:
        pending.append(A.c.repeat_after < seq)
    oldest = conn.execute(select(A.c.id, A.c.task_id, A.c.display_order).where(*pending)
                          .order_by(A.c.repeat_after).limit(1)).first()
    if oldest is None:
        return None
    # Taken before the copy is made: of two concurrent fetches by the same annotator only one
    # gets the repeat (the other's UPDATE waits for its commit and then matches no row).
    if conn.execute(update(A).where(A.c.id == oldest.id, A.c.repeat_after.is_not(None))
                    .values(repeat_after=None)).rowcount != 1:
        return None
    orig = conn.execute(select(T).where(T.c.id == oldest.task_id)).one()
    task_id = conn.execute(insert(T).values(
        project_id=orig.project_id, item_id=orig.item_id, candidate_ids=orig.candidate_ids,
        is_gold=False, gold_answer=None, repeat_of=orig.id, overlap=1, n_assigned=1,
        is_open=False, batch=orig.batch)).inserted_primary_key[0]
    order = list(reversed(oldest.display_order))
    _insert_assignment(conn, who, task_id, seq, order, now)
    return task_id, order


def _insert_assignment(conn: Connection, who: Annotator, task_id: int, seq: int,
                       order: list[int], now: float) -> None:
    _INSERT_ASSIGNMENT(conn, {"annotator_id": who.id, "task_id": task_id, "seq": seq,
                                      "display_order": order, "status": "open", "issued_at": now})


def _task_view(conn: Connection, who: Annotator, task_id: int, order: list[int],
               seq: int) -> dict[str, Any]:
    """What the annotator page gets: prompt and texts in shown order, nothing about sources."""
    rows = _VIEW(conn, {"b_tid": task_id}).all()
    texts = {r.id: r.text for r in rows}
    ids = rows[0].candidate_ids
    return {"task_id": task_id, "kind": who.kind, "seq": seq, "prompt": rows[0].prompt,
            "responses": [{"position": p + 1, "text": texts[ids[c]]} for p, c in enumerate(order)]}


def _answerable(conn: Connection, who: Annotator, task_id: int) -> Any:
    """The caller's open or expired assignment of `task_id`."""
    row = _ASSIGNMENT(conn, {"b_aid": who.id, "b_tid": task_id}).first()
    if row is None:
        raise NotFound(f"task {task_id} is not assigned to you")
    if row.status not in ("open", "expired"):
        raise AlreadySubmitted(f"task {task_id} was already {row.status}")
    return row


def _retake_slot(conn: Connection, who: Annotator, row: Any, task_id: int) -> None:
    """A late answer to an expired assignment takes a slot again, if the task has one free."""
    if row.repeat_of is not None:  # a private repeat never gave a slot away
        return
    if _BUMP(conn, {"b_tid": task_id}).scalar() is None:
        raise AssignmentExpired(
            f"task {task_id} was reserved for you for {who.settings.assignment_ttl_minutes:g} "
            "minutes; that time ran out and the task has since gone to other annotators, so "
            "this answer was not saved")


def submit_vote(conn: Connection, who: Annotator, task_id: int, vote: VoteIn,
                now: float | None = None) -> int | None:
    """Record the vote and return the seq to continue from: the assignment's seq, or None after
    a late answer to an expired assignment (the annotator may hold a newer task by then).
    Raises NotFound, AlreadySubmitted, AssignmentExpired or AnswerError."""
    now = time.time() if now is None else now
    row = _answerable(conn, who, task_id)
    answer = canonical_answer(who.kind, vote, row.display_order, who.settings.with_strength)
    if row.status == "expired":
        _retake_slot(conn, who, row, task_id)
    repeat_after = None
    if row.repeat_of is None and not row.is_gold and who.settings.repeat_share > 0 \
            and _uniform(who.seed, "repeat", who.id, task_id) < who.settings.repeat_share:
        repeat_after = row.seq + who.settings.repeat_gap
    shown = vote.model_dump(exclude_unset=True, exclude={"critique", "edited", "elapsed_ms"})
    done = _VOTE(conn, {
        "b_id": row.id, "b_status": row.status, "v_at": now, "v_ms": vote.elapsed_ms,
        "v_shown": shown, "v_answer": answer, "v_critique": vote.critique or None,
        "v_edited": vote.edited or None, "v_repeat": repeat_after}).rowcount
    if done != 1:  # a concurrent double submit got there first
        raise AlreadySubmitted(f"task {task_id} was already submitted")
    log_event(conn, who.pseudonym, "vote", who.project_id,
              {"assignment_id": row.id, "task_id": task_id, "late": row.status == "expired"})
    return row.seq if row.status == "open" else None


def skip_task(conn: Connection, who: Annotator, task_id: int, skip: SkipIn,
              now: float | None = None) -> int | None:
    """Mark the assignment skipped and give its overlap slot back to the queue (an expired one
    gave it back already); return the seq to continue from, as `submit_vote`."""
    now = time.time() if now is None else now
    row = _answerable(conn, who, task_id)
    done = conn.execute(update(A).where(A.c.id == row.id, A.c.status == row.status).values(
        status="skipped", submitted_at=now, skip_reason=skip.reason)).rowcount
    if done != 1:
        raise AlreadySubmitted(f"task {task_id} was already submitted")
    if row.repeat_of is None and row.status == "open":
        _RELEASE(conn, {"b_tid": task_id})
    log_event(conn, who.pseudonym, "skip", who.project_id,
              {"assignment_id": row.id, "task_id": task_id})
    return row.seq if row.status == "open" else None


def progress(conn: Connection, who: Annotator) -> dict[str, int]:
    """The annotator's own counts (nothing about other annotators)."""
    counts = dict(_PROGRESS(conn, {"b_aid": who.id}).all())
    return {"done": counts.get("voted", 0), "skipped": counts.get("skipped", 0)}


def my_votes(conn: Connection, who: Annotator) -> list[dict[str, Any]]:
    """The annotator's own submitted votes and skips, as they gave them (shown positions)."""
    rows = conn.execute(select(A.c.task_id, A.c.status, A.c.shown_answer, A.c.critique,
                               A.c.edited, A.c.skip_reason, A.c.submitted_at, A.c.elapsed_ms)
                        .where(and_(A.c.annotator_id == who.id,
                                    A.c.status.in_(("voted", "skipped"))))
                        .order_by(A.c.seq)).all()
    return [dict(r._mapping) for r in rows]
