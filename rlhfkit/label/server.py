"""Running the app under uvicorn (used by `rlhfkit annotate serve`, the tests and the benchmark).

One process serves by default. With `workers` > 1 uvicorn starts that many worker processes on
one listening socket (each builds its own app with `worker_app`); this process migrates the
store, prints the admin token and runs the SQLite WAL checkpoints, so none of that races
between workers. Workers write through `store.writing` (one writer at a time on
SQLite, queued on a file lock) and share the rate-limit buckets through a file in a private
temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine

from rlhfkit.label import projects, store
from rlhfkit.label.app import create_app
from rlhfkit.label.ratelimit import RateLimit

WORKER_SETTINGS_ENV = "RLHFKIT_ANNOTATE_WORKER"
"""Environment variable carrying the worker processes' settings (JSON) from `run`."""


def uvicorn_options() -> dict:
    """Fastest available event loop and HTTP parser: uvloop and httptools when installed
    (rlhfkit[label]), else asyncio and h11. Access logs off: one line per vote costs more than
    the vote. Proxy headers off: the app never looks at the client's address or scheme (limits
    are per token), so rewriting them from `X-Forwarded-*` would be work for nothing."""
    fast = importlib.util.find_spec("uvloop") and importlib.util.find_spec("httptools")
    return {"loop": "uvloop" if fast else "asyncio", "http": "httptools" if fast else "h11",
            "access_log": False, "log_level": "warning", "timeout_keep_alive": 30,
            "proxy_headers": False}


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls this factory in each worker)."""
    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    engine = store.make_engine(settings["url"])
    if engine.dialect.name == "sqlite":
        store.disable_autocheckpoint(engine)  # the parent process checkpoints
    return create_app(engine, RateLimit(settings["per_minute"], settings["burst"]),
                      shared_buckets=Path(settings["buckets"]))


def run(engine: Engine, host: str, port: int, rotate_admin_token: bool = False,
        rate_limit: RateLimit = RateLimit(), workers: int = 1) -> None:
    """Print the admin token if it is new, then serve with `workers` processes until interrupted."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    token = (projects.rotate_admin_token(engine) if rotate_admin_token
             else projects.ensure_admin_token(engine))
    if token is not None:
        # Printed once: only its SHA-256 is stored, so it cannot be shown again (rotate instead).
        print(f"admin token (shown once, keep it): {token}", file=sys.stderr, flush=True)
    print(f"annotation server on http://{host}:{port}/  (admin page: /admin; {workers} "
          f"process{'es' if workers > 1 else ''})", file=sys.stderr, flush=True)
    stop_checkpoints = (store.checkpoint_in_background(engine)
                        if engine.dialect.name == "sqlite" else None)
    try:
        if workers == 1:
            uvicorn.run(create_app(engine, rate_limit), host=host, port=port, **uvicorn_options())
            return
        with tempfile.TemporaryDirectory(prefix="rlhfkit-annotate-") as private:
            os.environ[WORKER_SETTINGS_ENV] = json.dumps({
                "url": engine.url.render_as_string(hide_password=False),
                "per_minute": rate_limit.per_minute, "burst": rate_limit.burst,
                "buckets": str(Path(private) / "rate-buckets")})
            try:
                uvicorn.run("rlhfkit.label.server:worker_app", factory=True, workers=workers, host=host,
                            port=port, **uvicorn_options())
            finally:
                os.environ.pop(WORKER_SETTINGS_ENV, None)  # it holds the database URL, password included
    finally:
        if stop_checkpoints is not None:
            stop_checkpoints()
