"""Benchmark: the annotation server under 50 concurrent simulated annotators, against Potato.

What it does
------------
* Builds a pairwise project in a temp dir (SQLite), or as a new project in the PostgreSQL
  database given by --db: annotators × votes tasks, overlap 1, prompts
  of 12–20 words and two responses of 36–44 words each (the peer's workload), one token per
  annotator.
* Starts `rlhfkit annotate serve` as a subprocess on 127.0.0.1 (by default one process: uvicorn
  with uvloop and httptools, DB calls inline on its event loop with SQLite, in threads with
  PostgreSQL; `--workers N` for N processes)
  and waits for /healthz. Its per-token rate
  limit is raised (`--rate-limit-per-minute`, default 1e9) rather than turned off: each simulated
  annotator votes far faster than a person (the server's default, 120 a minute, would throttle
  it), and the limiter's cost is still paid on every request, as in production.
* Runs the annotators as asyncio tasks in this process, each on its own keep-alive connection,
  doing what the annotator page does: load the page (/, app.js, style.css, /api/v1/me;
  untimed, like the peer's login), GET /api/v1/tasks/next, then per vote one
  POST /api/v1/tasks/{id}/vote whose answer carries the next task. No think time.
* Stops the server and counts votes in the database: lost = acknowledged votes whose
  (annotator, task, choice) is not stored; duplicated = stored votes beyond one per task.
* Unless --skip-peer, runs /work/shared/bench/anchors/potato_bench.py (same counts) after ours
  and prints one JSON line with both sides and `ratio_vs_potato` (votes/s, ours / theirs).

Cores: with one server process and --pin (default on a machine with ≥ 2 cores) the server's
event-loop thread is pinned to core 0 and this client to core 1 (with the server's WAL
checkpoint thread, which copies committed pages into the database file), so neither eats the
event loop's core;
with several server processes nothing is pinned. Server CPU counts the server's worker
processes too. The peer is run with its own defaults (it pins nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
CHOICES = ("1", "2", "tie")
PEER = Path("/work/shared/bench/anchors/potato_bench.py")
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def log(msg: str) -> None:
    print(f"[label_bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def build_project(url: str, project: str, n_tasks: int, n_annotators: int, seed: int) -> list[str]:
    from rlhfkit.data.schemas import Candidate, CandidateSet
    from rlhfkit.label import projects, store

    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    sets = [CandidateSet(prompt_id=f"p{i}", prompt=text(12, 20),
                         candidates=[Candidate(text=f"A{i} " + text(36, 44)),
                                     Candidate(text=f"B{i} " + text(36, 44))])
            for i in range(n_tasks)]
    engine = store.open_store(url)
    projects.create_project(engine, project, "pairwise", sets,
                            settings=projects.ProjectSettings(overlap=1, with_strength=False))
    projects.ensure_admin_token(engine)
    tokens = [projects.add_annotator(engine, project, f"annotator-{i:03d}") for i in range(n_annotators)]
    engine.dispose()
    return tokens


class Conn:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (responses carry Content-Length)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.auth = port, f"Bearer {token}"
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {self.auth}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:])
                      if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {"fetch": [], "submit": []}
        self.errors: dict[str, int] = {}
        self.examples: list[str] = []
        self.acked: dict[tuple[int, int], str] = {}

    def error(self, kind: str, msg: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(msg[:300])


async def timed(stats: Stats, kind: str, conn: Conn, *args) -> tuple[int, bytes]:
    t0 = time.perf_counter()
    st, data = await conn.request(*args)
    if st == 200:
        stats.lat[kind].append((time.perf_counter() - t0) * 1000)
    return st, data


async def annotator(idx: int, token: str, port: int, votes: int, stats: Stats,
                    ready: asyncio.Barrier, seed: int) -> None:
    rng = random.Random(seed * 1000 + idx)
    conn = Conn(port, token)
    for path in ("/", "/static/app.js", "/static/style.css", "/api/v1/me"):  # page load
        await conn.request("GET", path)
    await ready.wait()
    task, done, attempts = None, 0, 0
    while done < votes and attempts < 3 * votes:
        attempts += 1
        try:
            if task is None:
                st, data = await timed(stats, "fetch", conn, "GET", "/api/v1/tasks/next")
                if st != 200:
                    stats.error("fetch", f"{idx}: {st} {data[:200]!r}")
                    continue
                task = json.loads(data)["task"]
                if task is None:
                    stats.error("fetch", f"{idx}: no task left after {done} votes")
                    break
            choice = CHOICES[rng.randrange(3)]
            body = json.dumps({"choice": choice, "elapsed_ms": 0}).encode()
            st, data = await timed(stats, "submit", conn, "POST",
                                   f"/api/v1/tasks/{task['task_id']}/vote", body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            stats.error("transport", f"{idx}: {type(err).__name__}: {err}")
            conn.close()
            task = None
            continue
        if st != 200:  # e.g. 409 after a lost acknowledgement: reload the page state
            stats.error("submit", f"{idx}: {st} {data[:200]!r}")
            task = None
            continue
        stats.acked[(idx, task["task_id"])] = choice
        done += 1
        task = json.loads(data)["task"]
    conn.close()


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[max(0, min(len(s) - 1, -(-int(p * len(s)) // 100) - 1))], 2)


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its child processes (the server's workers), live ones."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, IndexError):
                continue  # exited meanwhile
    total = 0
    for p in [pid, *children]:
        fields = _stat(p)
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def count_stored(url: str, project: str, stats: Stats) -> dict:
    from sqlalchemy import func, select

    from rlhfkit.label import store

    a, n, t, p = store.assignment, store.annotator, store.task, store.project
    voted = (a.c.status == "voted", p.c.name == project)
    engine = store.make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(n.c.name, a.c.task_id, a.c.shown_answer).join(n, n.c.id == a.c.annotator_id)
                            .join(p, p.c.id == n.c.project_id).where(*voted)).all()
        per_task = conn.execute(select(func.count()).select_from(a).join(t, t.c.id == a.c.task_id)
                                .join(p, p.c.id == t.c.project_id).where(*voted).group_by(a.c.task_id)
                                .having(func.count() > 1)).all()
    engine.dispose()
    stored = {(int(name.split("-")[1]), task): ans["choice"] for name, task, ans in rows}
    return {"persisted_votes": len(stored),
            "lost_votes": sum(stored.get(k) != v for k, v in stats.acked.items()),
            "duplicated_votes": sum(n - 1 for (n,) in per_task),
            "persisted_not_acked": sum(k not in stats.acked for k in stored)}


async def load(args: argparse.Namespace, port: int, tokens: list[str], stats: Stats) -> float:
    ready = asyncio.Barrier(len(tokens) + 1)
    jobs = [asyncio.create_task(annotator(i, t, port, args.votes, stats, ready, args.seed))
            for i, t in enumerate(tokens)]
    await ready.wait()
    # The load generator's own garbage-collection pauses would show up as server latency
    # (the timings it keeps grow to 10,000 floats): none while it measures.
    gc.disable()
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*jobs), timeout=args.max_seconds)
    finally:
        gc.enable()
    return time.perf_counter() - t0


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import http.client

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not become healthy")


def run_ours(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="label-bench-"))
    from rlhfkit.label import store

    url = args.db or store.default_url(root)
    project = f"bench-{os.getpid()}-{int(time.time())}"  # a shared database may hold earlier runs
    t0 = time.perf_counter()
    # One spare task per annotator: after its last vote each annotator is handed (and holds) a
    # next task, as the page shows one.
    tokens = build_project(url, project, args.annotators * (args.votes + 1), args.annotators, args.seed)
    log(f"project built in {time.perf_counter() - t0:.1f}s; starting server")
    port = free_port()
    cmd = [sys.executable, "-c", "from rlhfkit.label.cli import app; app()", "serve",
           *(["--db", args.db] if args.db else ["--dir", str(root)]), "--port", str(port),
           "--workers", str(args.workers),
           "--rate-limit-per-minute", str(args.rate_limit_per_minute)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pinned = args.pin and args.workers == 1 and (os.cpu_count() or 1) >= 2
    stats = Stats()
    try:
        wait_healthy(port, proc)
        if pinned:
            # Linux affinity is per thread: this pins the server's main thread (its event loop)
            # only; its WAL-checkpoint thread, started by now, stays free to run on core 1.
            os.sched_setaffinity(proc.pid, {0})
            os.sched_setaffinity(0, {1})
        cpu0, ccpu0 = cpu_seconds(proc.pid), time.process_time()
        wall = asyncio.run(load(args, port, tokens, stats))
        cpu_srv, cpu_cli = cpu_seconds(proc.pid) - cpu0, time.process_time() - ccpu0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    acct = count_stored(url, project, stats)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    acked = len(stats.acked)
    return {
        "votes_per_s": round(acked / wall, 1),
        "submit_p50_ms": pct(stats.lat["submit"], 50), "submit_p99_ms": pct(stats.lat["submit"], 99),
        "fetch_p50_ms": pct(stats.lat["fetch"], 50), "fetch_p99_ms": pct(stats.lat["fetch"], 99),
        "errors": sum(stats.errors.values()), "acked_votes": acked,
        "expected_votes": args.annotators * args.votes, **acct,
        "detail": {"load_wall_s": round(wall, 2), "requests_per_vote": 1,
                   "request": "POST /api/v1/tasks/{id}/vote (answer carries the next task)",
                   "error_kinds": stats.errors, "error_examples": stats.examples,
                   "server_cpu_s": round(cpu_srv, 2), "client_cpu_s": round(cpu_cli, 2),
                   "server_cpu_ms_per_vote": round(1000 * cpu_srv / acked, 3) if acked else None,
                   "rate_limit_per_minute": args.rate_limit_per_minute,
                   "server_processes": args.workers,
                   "cores": "server's event loop pinned to core 0; client and the server's "
                            "WAL-checkpoint thread on core 1" if pinned
                   else "unpinned: the server's processes and the client share both cores", "store": "PostgreSQL" if args.db else "SQLite WAL, synchronous=NORMAL",
                   "root": str(root)},
    }


def run_peer(args: argparse.Namespace) -> dict | None:
    if args.skip_peer or not PEER.exists():
        return None
    log("running the peer (Potato), about 6 minutes")
    out = subprocess.run([sys.executable, str(PEER), "--annotators", str(args.annotators),
                          "--votes", str(args.votes), "--seed", str(args.seed)],
                         capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": f"peer exited {out.returncode}: {out.stderr[-500:]}"}
    return json.loads(lines[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotators", type=int, default=50)
    p.add_argument("--votes", type=int, default=200, help="votes per annotator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=600.0, help="cap on the load phase")
    p.add_argument("--rate-limit-per-minute", type=float, default=1e9,
                   help="server's per-token limit (0 = off; the serve default would throttle)")
    p.add_argument("--db", help="PostgreSQL URL to benchmark instead of a fresh SQLite file "
                                "(a new project is added; nothing is deleted)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (`serve --workers`); with 1, server and client get a core each")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server/client cores")
    p.add_argument("--skip-peer", action="store_true", help="do not run Potato")
    p.add_argument("--keep", action="store_true", help="keep the temp project dir (its path is printed)")
    args = p.parse_args()
    ours = run_ours(args)
    log(f"ours: {ours['votes_per_s']} votes/s, submit p99 {ours['submit_p99_ms']} ms")
    peer = run_peer(args)
    ratio = None
    if peer and peer.get("votes_per_s"):
        ratio = round(ours["votes_per_s"] / peer["votes_per_s"], 2)
    peer_keys = ("votes_per_s", "submit_p50_ms", "submit_p99_ms", "fetch_p50_ms", "fetch_p99_ms",
                 "errors", "lost_votes", "duplicated_votes", "acked_votes", "persisted_votes")
    record = {"bench": "rlhfkit_label", "annotators": args.annotators,
              "votes_per_annotator": args.votes, "ours": ours,
              "potato": {k: peer.get(k) for k in peer_keys} if peer and "error" not in peer else peer,
              "ratio_vs_potato": ratio, "machine": {"cpu_count": os.cpu_count()},
              "caveats": "ours: one request per vote (submit returns the next task) as our page "
                         "does; Potato's page needs three (fetch page, submit, advance)."}
    print(json.dumps(record), flush=True)
    return 0 if ours["lost_votes"] == 0 and ours["duplicated_votes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
