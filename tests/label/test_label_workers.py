"""Serving one store from several processes: the writer lock, shared rate-limit buckets, and
`serve --workers 2` under concurrent voters (no lost, duplicated or refused vote)."""

from __future__ import annotations

import http.client
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from labelkit import FakeClock, candidate_sets, free_port, hammer, hammer_project, make_setup, start_server

from rlhfkit.label import projects, store
from rlhfkit.label.ratelimit import RateLimit, SharedTokenBuckets, take_token


def test_take_token_by_hand():
    # 0.5 token left 3 s ago at 0.25 token/s, burst 2: refilled to min(2, 0.5 + 0.75) = 1.25.
    assert take_token(0.5, 10.0, 13.0, 0.25, 2.0) == (0.25, 0.0)
    # 0.25 left 1 s ago: 0.5 < 1, refused; wait (1 − 0.5) / 0.25 = 2 s.
    assert take_token(0.25, 10.0, 11.0, 0.25, 2.0) == (0.5, 2.0)
    # Capped at the burst, and a clock stepped back refills nothing.
    assert take_token(1.5, 0.0, 100.0, 0.25, 2.0) == (1.0, 0.0)
    assert take_token(0.5, 10.0, 5.0, 0.25, 2.0) == (0.5, 2.0)


def test_shared_buckets_are_one_bucket_per_key_across_openers(tmp_path):
    clock = FakeClock()
    limit = RateLimit(per_minute=60, burst=3)  # 1 token a second, 3 at most
    path = tmp_path / "buckets"
    a, b = SharedTokenBuckets(path, limit, clock), SharedTokenBuckets(path, limit, clock)
    assert [a.take(7), b.take(7), a.take(7)] == [0.0, 0.0, 0.0]  # the burst, shared
    assert b.take(7) == pytest.approx(1.0)  # refused by the other opener too
    assert a.take(2) == 0.0 and b.take(0) == 0.0  # other keys (unwritten records) start full
    clock.advance(1.0)
    assert b.take(7) == 0.0 and a.take(7) == pytest.approx(1.0)


HOLD_LOCK = """
import sys, time
from pathlib import Path
from rlhfkit.label.store import WriterLock
with WriterLock(Path(sys.argv[1])).held():
    print("held", flush=True)
    time.sleep(0.8)
"""


def _hold(path: Path) -> subprocess.Popen:
    """Another process holding the writer lock at `path` for 0.8 s (returned once it holds it)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_writer_lock_queues_another_process_and_times_out(tmp_path):
    path = tmp_path / "db.writer-lock"
    holder = _hold(path)
    try:
        with pytest.raises(store.StoreBusy, match="held db.writer-lock for over 0.1 s"):
            with store.WriterLock(path, timeout_s=0.1).held():
                pass
        start = time.perf_counter()
        with store.WriterLock(path).held():
            waited = time.perf_counter() - start
    finally:
        holder.wait(timeout=10)
    assert 0.4 < waited < 2.0  # waited until the other process let go (it held it 0.8 s)


def test_busy_store_answers_503_and_refused_tokens_never_wait_for_the_lock(tmp_path, client_for, monkeypatch):
    engine = store.open_store(store.default_url(tmp_path / "proj"))
    s = make_setup(engine)
    c = client_for(engine)
    lock = store._writer_lock(engine)
    monkeypatch.setattr(lock, "timeout_s", 0.1)
    holder = _hold(lock.path)
    try:
        busy = c.get("/api/v1/tasks/next", headers=s.h("alice"))
        start = time.perf_counter()
        refused = c.get("/api/v1/tasks/next", headers={"Authorization": "Bearer nope"})
        refused_s = time.perf_counter() - start
    finally:
        holder.wait(timeout=10)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert "the store is busy" in busy.json()["detail"]
    assert refused.status_code == 401 and refused_s < 0.1  # auth runs before the writer lock
    assert c.get("/api/v1/tasks/next", headers=s.h("alice")).status_code == 200


def _workers_of(pid: int) -> list[int]:
    """Child processes of `pid` running uvicorn workers (multiprocessing spawn children)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == pid and b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
                kids.append(int(entry.name))
    return kids


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_two_worker_processes_serve_one_store(tmp_path):
    directory, tokens = hammer_project(tmp_path, "two", 400, 6)
    names = list(tokens)
    port = free_port()
    proc = start_server(directory, port, "--workers", "2", "--rate-limit-per-minute", "0")
    acked = {n: [] for n in names}
    stop = threading.Event()
    threads = [threading.Thread(target=hammer, args=(port, tokens[n], acked[n], stop)) for n in names]
    try:
        assert len(_workers_of(proc.pid)) == 2
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        stop.set()
        _stop(proc)
    db = sqlite3.connect(directory / store.DB_FILENAME)
    voted = db.execute("SELECT task_id FROM assignment WHERE status = 'voted'").fetchall()
    db.close()
    # Every task voted exactly once (overlap 1), every acknowledged vote stored, nothing refused:
    # each hammering annotator ran until no task was left for it.
    assert sum(map(len, acked.values())) == len(voted) == len({t for (t,) in voted}) == 400


@contextmanager
def _paused(pid: int):
    """Process `pid` stopped (SIGSTOP) for the block: it accepts no connection meanwhile, so the
    listening socket the workers share hands every new one to the other worker."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        # kill() only queues the signal: wait until the process has stopped (state T).
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline, f"process {pid} did not stop"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _server_end_owner(conn: http.client.HTTPConnection, port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the server end of the open connection `conn` to 127.0.0.1:`port`:
    its socket inode from /proc/net/tcp, then the process with a descriptor on that inode."""
    ends = (f"{port:04X}", f"{conn.sock.getsockname()[1]:04X}")  # (local, remote) ports, in hex
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    sockets = {f"socket:[{r[9]}]" for r in rows if (r[1][-4:], r[2][-4:]) == ends}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in sockets:
                    return pid
            except OSError:  # a descriptor closed since the listing
                continue
    return None


def test_rate_limit_holds_across_worker_processes(tmp_path):
    directory = tmp_path / "proj"
    engine = store.open_store(store.default_url(directory))
    projects.create_project(engine, "rl", "pairwise", candidate_sets(2))
    token = projects.add_annotator(engine, "rl", "alice")
    engine.dispose()
    port, burst = free_port(), 20
    # 0.001 a minute: the bucket refills nothing measurable during the test.
    proc = start_server(directory, port, "--workers", "2", "--rate-limit-per-minute", "0.001",
                        "--rate-limit-burst", str(burst))
    statuses, served_by = [], []
    try:
        workers = _workers_of(proc.pid)
        assert len(workers) == 2
        for other in reversed(workers):  # both up and answering before the loop (/healthz takes no token)
            with _paused(other):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("GET", "/healthz")
                assert c.getresponse().status == 200
                c.close()
        # Left alone, the kernel often hands every connection to the same worker, and per-process
        # buckets would pass. So the workers take turns: the other one is paused during each
        # request, and each worker gets `burst` requests, a full bucket's worth on its own.
        for i in range(2 * burst):
            with _paused(workers[1 - i % 2]):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    c.request("GET", "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
                    resp = c.getresponse()
                    resp.read()
                    statuses.append(resp.status)
                    served_by.append(_server_end_owner(c, port, workers))  # still open: keep-alive
                finally:
                    c.close()
    finally:
        _stop(proc)
    assert served_by == [workers[i % 2] for i in range(2 * burst)]  # seen, not just arranged
    # One bucket across the workers: the first `burst` requests pass, the rest are refused. With
    # a bucket per process each worker would pass all its `burst` requests: 2 × burst 200s.
    assert statuses == [200] * burst + [429] * burst
