"""Running the app under uvicorn (used by `rlhfkit annotate serve`, the tests and the benchmark)."""

from __future__ import annotations

import importlib.util
import sys

from sqlalchemy import Engine

from rlhfkit.label import projects, store
from rlhfkit.label.app import create_app
from rlhfkit.label.ratelimit import RateLimit


def uvicorn_options() -> dict:
    """Fastest available event loop and HTTP parser: uvloop and httptools when installed
    (rlhfkit[label]), else asyncio and h11. Access logs off: one line per vote costs more than
    the vote. Proxy headers off: the app never looks at the client's address or scheme (limits
    are per token), so rewriting them from `X-Forwarded-*` would be work for nothing."""
    fast = importlib.util.find_spec("uvloop") and importlib.util.find_spec("httptools")
    return {"loop": "uvloop" if fast else "asyncio", "http": "httptools" if fast else "h11",
            "access_log": False, "log_level": "warning", "timeout_keep_alive": 30,
            "proxy_headers": False}


def run(engine: Engine, host: str, port: int, rotate_admin_token: bool = False,
        rate_limit: RateLimit = RateLimit()) -> None:
    """Print the admin token if it is new, then serve until interrupted."""
    import uvicorn

    token = (projects.rotate_admin_token(engine) if rotate_admin_token
             else projects.ensure_admin_token(engine))
    if token is not None:
        # Printed once: only its SHA-256 is stored, so it cannot be shown again (rotate instead).
        print(f"admin token (shown once, keep it): {token}", file=sys.stderr, flush=True)
    print(f"annotation server on http://{host}:{port}/  (admin page: /admin)", file=sys.stderr,
          flush=True)
    stop_checkpoints = (store.checkpoint_in_background(engine)
                        if engine.dialect.name == "sqlite" else None)
    try:
        uvicorn.run(create_app(engine, rate_limit), host=host, port=port, **uvicorn_options())
    finally:
        if stop_checkpoints is not None:
            stop_checkpoints()
