"""Helpers shared by the annotation-app tests (imported by name: tests/label is on sys.path)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from rlhfkit.data.schemas import Candidate, CandidateSet, Provenance
from rlhfkit.label import projects


def candidate_sets(n: int, k: int = 2, models: tuple[str, ...] = ("sft", "ppo"),
                   gold: dict[int, list[float]] | None = None, prefix: str = "p") -> list[CandidateSet]:
    """n prompts with k distinct candidates each; candidate j comes from models[j % len]."""
    gold = gold or {}
    return [CandidateSet(
        prompt_id=f"{prefix}{i}", prompt=f"Prompt number {i}?",
        candidates=[Candidate(text=f"answer {i}.{j}",
                              provenance=Provenance(model=models[j % len(models)], seed=j))
                    for j in range(k)],
        meta={"gold": gold[i]} if i in gold else {}) for i in range(n)]


@dataclass
class Setup:
    engine: object
    project: str
    tokens: dict[str, str]
    admin: str
    extra: dict = field(default_factory=dict)

    def h(self, name: str) -> dict[str, str]:
        token = self.admin if name == "admin" else self.tokens[name]
        return {"Authorization": f"Bearer {token}"}


def make_setup(engine, kind: str = "pairwise", n: int = 4, k: int = 2,
               annotators: tuple[str, ...] = ("alice", "bob"), settings=None, sets=None,
               guidelines: str = "# Guidelines\nPick the **better** answer.", seed: int = 0) -> Setup:
    projects.create_project(engine, "proj", kind, sets or candidate_sets(n, k), guidelines,
                            settings or projects.ProjectSettings(overlap=2), seed=seed)
    admin = projects.ensure_admin_token(engine)
    tokens = {a: projects.add_annotator(engine, "proj", a) for a in annotators}
    return Setup(engine, "proj", tokens, admin)


class FakeClock:
    """A clock the test moves by hand (`clock.advance(seconds)`), for leases and rate limits."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn on 127.0.0.1:<free port> in a background thread; always stopped by the fixture."""

    def __init__(self, engine, **app_options) -> None:
        import uvicorn

        from rlhfkit.label.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(engine, **app_options), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("live server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def hammer_project(tmp_path, name: str, n_tasks: int, n_annotators: int) -> tuple:
    """(project directory, {annotator name: token}) of a pairwise SQLite project with overlap 1,
    ready for `start_server` and `hammer`."""
    from rlhfkit.label import store

    directory = tmp_path / "proj"
    engine = store.open_store(store.default_url(directory))
    projects.create_project(engine, name, "pairwise", candidate_sets(n_tasks),
                            settings=projects.ProjectSettings(overlap=1, with_strength=False))
    tokens = {f"a{i}": projects.add_annotator(engine, name, f"a{i}") for i in range(n_annotators)}
    engine.dispose()
    return directory, tokens


SERVE = [sys.executable, "-c", "from rlhfkit.label.cli import app; app()", "serve"]


def start_server(directory, port: int, *options: str) -> subprocess.Popen:
    """`rlhfkit annotate serve` in a subprocess, returned once /healthz answers. Without
    `options` there is no rate limit: hammering threads are a load, not honest annotators."""
    proc = subprocess.Popen([*SERVE, "--dir", str(directory), "--port", str(port),
                             *(options or ("--rate-limit-per-minute", "0"))],
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
