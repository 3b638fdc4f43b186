"""Assignment leases (expiry, late answers) and the per-token rate limit, on a clock the tests
move by hand. The API tests run on SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import pytest
from labelkit import FakeClock, make_setup
from sqlalchemy import select

from rlhfkit.label import projects, store
from rlhfkit.label.ratelimit import RateLimit, TokenBuckets, retry_after

MINUTE = 60.0
TTL = 30.0


def lease_setup(engine, client_for, n=1, overlap=1, ttl=TTL, names=("alice", "bob"), **extra):
    clock = FakeClock()
    s = make_setup(engine, n=n, annotators=names, settings=projects.ProjectSettings(
        overlap=overlap, assignment_ttl_minutes=ttl, with_strength=False, **extra))
    return s, client_for(engine, clock=clock), clock


def next_of(c, s, name):
    return c.get("/api/v1/tasks/next", headers=s.h(name)).json()


def assignments(engine, task_id):
    A, N = store.assignment, store.annotator
    with engine.connect() as conn:
        return dict(conn.execute(select(N.c.name, A.c.status).join(N, N.c.id == A.c.annotator_id)
                                 .where(A.c.task_id == task_id)).all())


def task_row(engine, task_id):
    with engine.connect() as conn:
        return conn.execute(select(store.task).where(store.task.c.id == task_id)).one()


# ---------------------------------------------------------------------------------------- leases
def test_abandoned_task_goes_back_to_the_pool_and_a_late_vote_is_409_when_full(engine, client_for):
    s, c, clock = lease_setup(engine, client_for)
    t = next_of(c, s, "alice")["task"]["task_id"]
    assert next_of(c, s, "bob")["task"] is None  # overlap 1: alice holds the only slot
    clock.advance(TTL * MINUTE - 1)
    assert next_of(c, s, "bob")["task"] is None  # still within the lease
    clock.advance(2)
    assert next_of(c, s, "bob")["task"]["task_id"] == t  # expired: the slot is bob's now
    assert assignments(engine, t) == {"alice": "expired", "bob": "open"}
    assert c.post(f"/api/v1/tasks/{t}/vote", headers=s.h("bob"), json={"choice": "1"}).status_code == 200
    late = c.post(f"/api/v1/tasks/{t}/vote", headers=s.h("alice"), json={"choice": "2"})
    assert late.status_code == 409
    assert late.json()["code"] == "assignment_expired" and "not saved" in late.json()["detail"]
    assert assignments(engine, t) == {"alice": "expired", "bob": "voted"}
    assert (task_row(engine, t).n_assigned, task_row(engine, t).is_open) == (1, False)
    assert next_of(c, s, "alice") == {"task": None, "progress": {"done": 0, "skipped": 0}}
    assert c.get("/api/v1/votes", headers=s.h("alice")).json() == []  # expired is not a vote
    with engine.connect() as conn:
        kinds = [k for (k,) in conn.execute(select(store.event_log.c.kind))]
    assert kinds.count("expire") == 1


def test_a_process_sweeps_a_project_at_most_once_a_second(engine, client_for):
    from rlhfkit.label.assign import LEASE_SWEEP_INTERVAL_S

    s, c, clock = lease_setup(engine, client_for)
    t = next_of(c, s, "alice")["task"]["task_id"]
    clock.advance(TTL * MINUTE - 0.4)
    assert next_of(c, s, "bob")["task"] is None  # a sweep: nothing stale yet
    clock.advance(0.8)  # alice's lease is over, but the last sweep was 0.8 s ago
    assert next_of(c, s, "bob")["task"] is None
    assert assignments(engine, t) == {"alice": "open"}
    clock.advance(LEASE_SWEEP_INTERVAL_S - 0.8)
    assert next_of(c, s, "bob")["task"]["task_id"] == t
    assert assignments(engine, t) == {"alice": "expired", "bob": "open"}


def test_late_vote_is_kept_while_the_task_has_room(engine, client_for):
    s, c, clock = lease_setup(engine, client_for, overlap=2, names=("alice", "bob", "carol"))
    t = next_of(c, s, "alice")["task"]["task_id"]
    clock.advance(TTL * MINUTE + 1)
    assert next_of(c, s, "bob")["task"]["task_id"] == t  # alice's slot expired, bob took one
    assert task_row(engine, t).n_assigned == 1
    late = c.post(f"/api/v1/tasks/{t}/vote", headers=s.h("alice"), json={"choice": "2"})
    assert late.status_code == 200, late.text
    assert late.json() == {"task": None, "progress": {"done": 1, "skipped": 0}}
    # The late vote took the second slot again, so carol finds the task full (never 3 on 2).
    assert (task_row(engine, t).n_assigned, task_row(engine, t).is_open) == (2, False)
    assert next_of(c, s, "carol")["task"] is None
    assert c.post(f"/api/v1/tasks/{t}/vote", headers=s.h("bob"), json={"choice": "1"}).status_code == 200
    assert assignments(engine, t) == {"alice": "voted", "bob": "voted"}
    again = c.post(f"/api/v1/tasks/{t}/vote", headers=s.h("alice"), json={"choice": "1"})
    assert again.status_code == 409 and "code" not in again.json()  # a plain double submit


def test_owner_gets_a_fresh_task_after_expiry_and_a_late_skip_frees_nothing(engine, client_for):
    s, c, clock = lease_setup(engine, client_for, n=2, names=("alice", "bob", "carol"))
    t1 = next_of(c, s, "alice")["task"]["task_id"]
    clock.advance(TTL * MINUTE + 1)
    t2 = next_of(c, s, "alice")["task"]  # a reload after the lease: her stale task is gone
    assert t2["task_id"] != t1 and t2["seq"] == 2
    assert next_of(c, s, "bob")["task"]["task_id"] == t1
    r = c.post(f"/api/v1/tasks/{t1}/skip", headers=s.h("alice"), json={"reason": "came back late"})
    assert r.status_code == 200
    assert r.json()["task"]["task_id"] == t2["task_id"]  # she still holds t2, not a third task
    # The expiry already gave t1's slot back (and bob holds it): the late skip gives nothing.
    assert task_row(engine, t1).n_assigned == 1 and next_of(c, s, "carol")["task"] is None


def test_lease_zero_never_expires(engine, client_for):
    s, c, clock = lease_setup(engine, client_for, ttl=0)
    t = next_of(c, s, "alice")["task"]["task_id"]
    clock.advance(365 * 24 * 3600)
    assert next_of(c, s, "bob")["task"] is None
    assert next_of(c, s, "alice")["task"]["task_id"] == t


def test_expired_repeat_stays_private_and_a_late_answer_is_kept(engine, client_for):
    s, c, clock = lease_setup(engine, client_for, n=12, names=("alice",), repeat_share=0.5,
                              repeat_gap=2)
    seen, t = set(), next_of(c, s, "alice")["task"]
    while t["prompt"] not in seen:  # vote until a swapped-order repeat comes up (seeded)
        seen.add(t["prompt"])
        t = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"),
                   json={"choice": "1"}).json()["task"]
    assert task_row(engine, t["task_id"]).repeat_of is not None
    clock.advance(TTL * MINUTE + 1)
    nxt = next_of(c, s, "alice")["task"]
    assert nxt["task_id"] != t["task_id"]
    assert assignments(engine, t["task_id"]) == {"alice": "expired"}
    row = task_row(engine, t["task_id"])
    assert (row.n_assigned, row.is_open) == (1, False)  # no slot for anyone else
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "2"})
    assert r.status_code == 200 and r.json()["task"]["task_id"] == nxt["task_id"]
    assert assignments(engine, t["task_id"]) == {"alice": "voted"}


def test_lease_setting_is_validated():
    with pytest.raises(projects.ProjectError, match="assignment_ttl_minutes"):
        projects.ProjectSettings(assignment_ttl_minutes=-1).check()
    with pytest.raises(projects.ProjectError, match="assignment_ttl_minutes"):
        projects.ProjectSettings(assignment_ttl_minutes=float("nan")).check()


# ---------------------------------------------------------------------------------------- rate limit
def test_token_bucket_by_hand():
    clock = FakeClock(0.0)
    b = TokenBuckets(RateLimit(per_minute=60, burst=3), clock)  # 1 token/s, 3 at most
    assert [b.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a") == pytest.approx(1.0)  # empty: the next token is 1 s away
    assert b.take("b") == 0.0  # another key has its own bucket
    clock.advance(0.25)
    assert b.take("a") == pytest.approx(0.75)  # 0.25 token back, 0.75 to go
    clock.advance(0.75)
    assert b.take("a") == 0.0 and b.take("a") == pytest.approx(1.0)
    clock.advance(100)  # refill stops at the burst
    assert [b.take("a") for _ in range(4)][3] == pytest.approx(1.0)
    clock.advance(-50)  # a clock stepping back refills nothing and drains nothing
    assert b.take("a") == pytest.approx(1.0)
    off = TokenBuckets(RateLimit(per_minute=0, burst=1), clock)
    assert all(off.take("a") == 0.0 for _ in range(1000))


def test_retry_after_rounds_up_to_whole_seconds():
    assert [retry_after(w) for w in (0.01, 1.0, 1.01, 9.5)] == ["1", "1", "2", "10"]
    with pytest.raises(ValueError):
        RateLimit(per_minute=-1)
    with pytest.raises(ValueError):
        RateLimit(burst=0)


def test_api_answers_429_with_retry_after_per_token(engine, client_for):
    clock = FakeClock()
    s = make_setup(engine, n=4, settings=projects.ProjectSettings(overlap=2, with_strength=False))
    c = client_for(engine, rate_limit=RateLimit(per_minute=6, burst=2), clock=clock)  # 1 per 10 s
    t = next_of(c, s, "alice")["task"]
    assert c.get("/api/v1/me", headers=s.h("alice")).status_code == 200
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
    assert r.status_code == 429 and r.headers["retry-after"] == "10"
    assert "6 a minute" in r.json()["detail"]
    assert c.get("/api/v1/votes", headers=s.h("bob")).status_code == 200  # bob is not throttled
    clock.advance(9)
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    clock.advance(1.5)
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
    assert r.status_code == 200, r.text
    with engine.connect() as conn:  # the throttled attempts stored nothing
        assert conn.execute(select(store.assignment.c.status).where(
            store.assignment.c.status == "voted")).all() == [("voted",)]
    ah = s.h("admin")  # the admin token has its own bucket
    assert [c.get("/api/v1/admin/projects", headers=ah).status_code for _ in range(3)] == [200, 200, 429]
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # no token, no limit


def test_default_limit_lets_a_fast_human_through(engine, client_for):
    """A person voting every second for 10 minutes, reloading the page every 20 votes, is never
    throttled by the default limit; a script sending 10 requests a second is, within seconds."""
    clock = FakeClock()
    s = make_setup(engine, n=700, settings=projects.ProjectSettings(overlap=1, with_strength=False))
    c = client_for(engine, clock=clock)
    t = next_of(c, s, "alice")["task"]
    for n in range(600):
        clock.advance(1.0)
        if n % 20 == 0:
            assert c.get("/api/v1/me", headers=s.h("alice")).status_code == 200
            t = next_of(c, s, "alice")["task"]
        r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
        assert r.status_code == 200, (n, r.text)
        t = r.json()["task"]
    codes = []
    for _ in range(80):
        clock.advance(0.1)
        codes.append(c.get("/api/v1/votes", headers=s.h("bob")).status_code)
    # By hand: before request k the bucket holds 60 − (k − 1) + 0.2·(k − 1) tokens, ≥ 1 up to
    # k = 74; the 75th finds 0.8.
    assert codes[:74] == [200] * 74 and codes[74] == 429
