"""Concurrent transactions inside one server process: on PostgreSQL the per-vote transactions
run in threads (`app.store_runner`), claims pass over tasks other transactions are claiming
(SKIP LOCKED) yet wait for one when nothing else is open, and the rate-limit buckets stay exact
under threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import text

from labelkit import make_setup
from rlhfkit.label import projects
from rlhfkit.label.app import store_runner
from rlhfkit.label.assign import authenticate, next_task
from rlhfkit.label.ratelimit import RateLimit, SharedTokenBuckets, TokenBuckets


def test_postgres_transactions_run_in_threads_and_sqlite_inline(engine):
    loop_thread = threading.get_ident()
    ran_in = asyncio.run(store_runner(engine)(threading.get_ident))
    assert (ran_in == loop_thread) == (engine.dialect.name == "sqlite")


def _postgres_only(engine):
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: no row locks to pass over")


def _who(engine, token):
    with engine.connect() as conn:
        return authenticate(conn, token)


def test_a_claim_passes_over_a_task_another_transaction_is_claiming(engine):
    _postgres_only(engine)
    s = make_setup(engine, n=3)  # overlap 2: alice's task still has a slot for bob
    alice, bob = _who(engine, s.tokens["alice"]), _who(engine, s.tokens["bob"])
    with engine.connect() as holder, holder.begin():
        first = next_task(holder, alice)  # task locked until this transaction ends
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting on alice's lock would fail
            started = time.perf_counter()
            other = next_task(conn, bob)
            waited = time.perf_counter() - started
    assert other["task_id"] != first["task_id"] and waited < 1.0


def test_a_claim_waits_for_a_locked_task_when_no_other_is_open(engine):
    _postgres_only(engine)
    s = make_setup(engine, n=1)  # one task, two slots
    alice, bob = _who(engine, s.tokens["alice"]), _who(engine, s.tokens["bob"])
    claimed, release = threading.Event(), threading.Event()
    got = {}

    def hold_a_claim():
        with engine.connect() as conn, conn.begin():
            got["alice"] = next_task(conn, alice)
            claimed.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a_claim)
    holder.start()
    claimed.wait(10)
    threading.Timer(0.5, release.set).start()
    started = time.perf_counter()
    with engine.connect() as conn, conn.begin():
        got["bob"] = next_task(conn, bob)  # not "nothing left": the locked task has a free slot
    waited = time.perf_counter() - started
    holder.join(10)
    assert got["bob"] is not None and got["bob"]["task_id"] == got["alice"]["task_id"]
    assert waited > 0.3  # it waited for alice's commit rather than skipping past


def _take_from_threads(buckets, n_threads: int = 8, per_thread: int = 10) -> int:
    granted = []

    def take():
        granted.extend(1 for _ in range(per_thread) if buckets.take(7) == 0.0)

    threads = [threading.Thread(target=take) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(granted)


def _switching_clock():
    """A frozen clock that gives up the GIL on each reading: another thread runs between a
    bucket's read and its write unless the bucket holds a lock across them."""
    time.sleep(0.0001)
    return 1_000_000.0


@pytest.mark.parametrize("kind", ["in_process", "shared_file"])
def test_token_buckets_grant_exactly_the_burst_to_concurrent_threads(kind, tmp_path):
    limit = RateLimit(per_minute=0.001, burst=20)  # no refill during the test
    buckets = TokenBuckets(limit, clock=_switching_clock) if kind == "in_process" else \
        SharedTokenBuckets(tmp_path / "buckets", limit, clock=_switching_clock)
    assert _take_from_threads(buckets) == 20


def test_overlap_is_never_exceeded_by_concurrent_claims(engine):
    """8 annotators claiming in threads at once: each task is handed to at most `overlap` of
    them, and nobody is told "nothing left" while tasks are open."""
    names = tuple(f"a{i}" for i in range(8))
    s = make_setup(engine, n=6, annotators=names, settings=projects.ProjectSettings(overlap=2))
    people = [_who(engine, s.tokens[name]) for name in names]
    handed: list[int | None] = []
    start = threading.Barrier(len(people))

    def claim(who):
        start.wait(10)
        with engine.connect() as conn, conn.begin():
            task = next_task(conn, who)
        handed.append(None if task is None else task["task_id"])

    threads = [threading.Thread(target=claim, args=(who,)) for who in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert None not in handed and len(handed) == 8
    assert max(handed.count(task) for task in set(handed)) <= 2
