"""Fixtures for the annotation app: a fresh store (SQLite, or PostgreSQL when
RLHFKIT_TEST_DATABASE_URL is set), projects, tokens, an in-process client and a live server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

pytest.importorskip("fastapi")

# --import-mode=importlib puts no test directory on sys.path; the shared helpers of this folder
# live in labelkit.py (a unique name) and are imported by the tests as `labelkit`.
sys.path.insert(0, str(Path(__file__).parent))
from labelkit import LiveServer  # noqa: E402

from rlhfkit.label import store  # noqa: E402

PG_ENV = "RLHFKIT_TEST_DATABASE_URL"


def _reset_postgres(url: str) -> None:
    engine = store.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database URL; the postgres variant runs only when RLHFKIT_TEST_DATABASE_URL
    names a database this test may wipe."""
    if request.param == "sqlite":
        return store.default_url(tmp_path / "proj")
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL variant: set {PG_ENV}=postgresql://user@host:port/db (wiped!)")
    _reset_postgres(url)
    return url


@pytest.fixture
def engine(db_url):
    eng = store.open_store(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def client_for():
    """Make a TestClient for an engine (the app is built per test)."""
    from fastapi.testclient import TestClient

    from rlhfkit.label.app import create_app

    clients = []

    def make(engine, **app_options):
        c = TestClient(create_app(engine, **app_options), raise_server_exceptions=False)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def live_server():
    servers = []

    def start(engine, **app_options) -> LiveServer:
        srv = LiveServer(engine, **app_options)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()
