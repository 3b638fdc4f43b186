"""Killing the server (SIGKILL) in the middle of a load loses no acknowledged vote."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time

from labelkit import candidate_sets, free_port

from rlhfkit.label import projects, store

SERVE = [sys.executable, "-c", "from rlhfkit.label.cli import app; app()", "serve"]


def start_server(directory, port: int) -> subprocess.Popen:
    # No rate limit: the hammering threads are a load, not honest annotators.
    proc = subprocess.Popen([*SERVE, "--dir", str(directory), "--port", str(port),
                             "--rate-limit-per-minute", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def hammer(port: int, token: str, acked: list, stop: threading.Event) -> None:
    """Vote as fast as possible; record (task, choice) only when the server acknowledged it."""
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/api/v1/tasks/next", headers=auth)
        task = json.loads(c.getresponse().read())["task"]
        while task and not stop.is_set():
            choice = "1" if task["task_id"] % 2 else "2"
            c.request("POST", f"/api/v1/tasks/{task['task_id']}/vote",
                      body=json.dumps({"choice": choice}), headers=auth)
            resp = c.getresponse()
            body = json.loads(resp.read())
            if resp.status != 200:
                return
            acked.append((task["task_id"], choice))
            task = body["task"]
    except (OSError, http.client.HTTPException, ValueError):
        return  # the server was killed: whatever was not acknowledged does not count


def test_sigkill_mid_load_loses_no_acknowledged_vote(tmp_path):
    directory = tmp_path / "proj"
    engine = store.open_store(store.default_url(directory))
    projects.create_project(engine, "crash", "pairwise", candidate_sets(3000),
                            settings=projects.ProjectSettings(overlap=1, with_strength=False))
    names = [f"a{i}" for i in range(4)]
    tokens = {n: projects.add_annotator(engine, "crash", n) for n in names}
    engine.dispose()
    port = free_port()
    proc = start_server(directory, port)
    acked = {n: [] for n in names}
    stop = threading.Event()
    threads = [threading.Thread(target=hammer, args=(port, tokens[n], acked[n], stop))
               for n in names]
    try:
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while sum(map(len, acked.values())) < 200 and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(timeout=10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        for t in threads:
            t.join(timeout=10)
    assert sum(map(len, acked.values())) >= 200
    proc = start_server(directory, port)
    try:
        for n in names:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/api/v1/votes", headers={"Authorization": f"Bearer {tokens[n]}"})
            stored = {(v["task_id"], v["shown_answer"]["choice"]) for v in json.loads(c.getresponse().read())}
            assert set(acked[n]) <= stored, f"{n}: acknowledged votes missing after restart"
            assert len(stored) - len(acked[n]) <= 1  # at most the one in flight when killed
    finally:
        proc.terminate()
        proc.wait(timeout=10)
