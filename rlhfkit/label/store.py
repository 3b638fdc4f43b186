"""The annotation store: table definitions, engine set-up and schema migrations.

SQLAlchemy 2 Core over SQLite (default, one file in the project directory) or PostgreSQL (by
URL). The schema is created and upgraded only through Alembic (`migrations/`), so a store made
by an older rlhfkit is upgraded in place when opened (`open_store`).

Tables (one row each):
- `setting`     server-wide key/value (the admin token hash).
- `project`     one annotation project: kind, guidelines, settings JSON, seed.
- `item`        one `CandidateSet` (prompt + candidates) of a project, tagged with its batch.
- `candidate`   one response of an item, with its provenance (never sent to annotators).
- `task`        one display unit: 2..K candidates of an item (or one, for rating), gold flag and
                answer, `repeat_of` for swapped-order repeats, the overlap cap, `n_assigned`
                (live claims: open or voted) and `is_open` (n_assigned < overlap).
- `annotator`   a per-project annotator: pseudonym, hashed token, active flag.
- `assignment`  a task handed to an annotator, with the shown order; it becomes the vote
                (status `voted` / `skipped`) in place, or `expired` when left open longer than
                the project's lease (its slot goes back to the pool; a late answer may still
                turn it into a vote). Unique (annotator, task): one vote each.
                `repeat_after` = the annotator's seq after which a swapped repeat is due.
- `event`       append-only audit log of every write (triggers refuse UPDATE/DELETE).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON, Boolean, Column, Connection, Engine, Float, ForeignKey, Index, Integer, MetaData, String, Table,
    Text, UniqueConstraint, create_engine, event,
)

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for another process's write lock (e.g. `add-batch` while serving)."""
WAL_CHECKPOINT_INTERVAL_S = 0.5
"""How often the server's background thread checkpoints the WAL (`checkpoint_in_background`):
the WAL holds at most about half a second of commits."""
POSTGRES_POOL_SIZE = 16
"""Pooled connections to a PostgreSQL store: the server runs up to this many per-vote
transactions at once in threads (`app.store_runner`), each on its own connection."""
DB_FILENAME = "annotation.db"
log = logging.getLogger(__name__)

metadata = MetaData()

setting = Table(
    "setting", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

project = Table(
    "project", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("guidelines_md", Text, nullable=False),
    Column("settings", JSON, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

item = Table(
    "item", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("project.id", ondelete="CASCADE"), nullable=False),
    Column("prompt_id", String(200), nullable=False),
    Column("prompt", JSON, nullable=False),
    Column("meta", JSON, nullable=False),
    Column("batch", Integer, nullable=False),
    UniqueConstraint("project_id", "batch", "prompt_id", name="uq_item_prompt"),
)

candidate = Table(
    "candidate", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", ForeignKey("item.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("idx", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("finished", Boolean, nullable=False),
    Column("provenance", JSON, nullable=False),
)

task = Table(
    "task", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("project.id", ondelete="CASCADE"), nullable=False),
    Column("item_id", ForeignKey("item.id", ondelete="CASCADE"), nullable=False),
    Column("candidate_ids", JSON, nullable=False),
    Column("is_gold", Boolean, nullable=False),
    Column("gold_answer", JSON, nullable=True),
    Column("repeat_of", ForeignKey("task.id"), nullable=True, index=True),
    Column("overlap", Integer, nullable=False),
    Column("n_assigned", Integer, nullable=False),
    Column("is_open", Boolean, nullable=False),
    Column("batch", Integer, nullable=False),
    Index("ix_task_queue", "project_id", "is_open", "is_gold", "id"),
)

annotator = Table(
    "annotator", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", ForeignKey("project.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("pseudonym", String(32), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("active", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_annotator_name"),
)

assignment = Table(
    "assignment", metadata,
    Column("id", Integer, primary_key=True),
    Column("annotator_id", ForeignKey("annotator.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", ForeignKey("task.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("display_order", JSON, nullable=False),
    Column("status", String(8), nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("submitted_at", Float, nullable=True),
    Column("elapsed_ms", Integer, nullable=True),
    Column("shown_answer", JSON, nullable=True),
    Column("answer", JSON, nullable=True),
    Column("critique", Text, nullable=True),
    Column("edited", Text, nullable=True),
    Column("skip_reason", Text, nullable=True),
    Column("repeat_after", Integer, nullable=True),
    UniqueConstraint("annotator_id", "task_id", name="uq_assignment_annotator_task"),
    Index("ix_assignment_annotator_status", "annotator_id", "status"),
    Index("ix_assignment_repeat", "annotator_id", "repeat_after"),
    # Finds open assignments past their lease without scanning the answered ones (migration 0002).
    Index("ix_assignment_status_issued", "status", "issued_at"),
)

event_log = Table(
    "event", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("project_id", Integer, nullable=True),
    Column("detail", JSON, nullable=False),
)


def default_url(project_dir: str | os.PathLike) -> str:
    """SQLite URL of the store file inside `project_dir` (created if missing, mode 0700)."""
    path = Path(project_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqlite:///{(path / DB_FILENAME).resolve()}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL: readers never block the writer; synchronous=NORMAL keeps every committed transaction
    # across a crash of the process (the WAL is written before COMMIT returns) and loses at most
    # the last commits on power loss; busy_timeout waits for another process's write lock.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.close()


class StoreURLError(RuntimeError):
    """A store URL that names no supported database, or whose driver is not installed."""


def redact(url: str) -> str:
    """`url` with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find
        return url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite connections get WAL, foreign keys and a busy timeout.
    `postgresql://` and `postgres://` (the spelling of Heroku-style URLs, which SQLAlchemy no
    longer accepts) both mean PostgreSQL through psycopg 3."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            json_serializer=_dumps,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    for alias in ("postgresql://", "postgres://"):
        if url.startswith(alias):
            url = "postgresql+psycopg://" + url[len(alias):]
    try:
        return create_engine(url, json_serializer=_dumps, pool_pre_ping=True, pool_size=POSTGRES_POOL_SIZE)
    except ModuleNotFoundError as err:
        raise StoreURLError(
            f"no driver for {url.split(':', 1)[0]}: install rlhfkit[postgres] ({err})") from err
    except (NoSuchModuleError, ArgumentError) as err:
        raise StoreURLError(f"unsupported store URL {redact(url)}: use sqlite:///PATH or "
                            f"postgresql://user@host/db ({err})") from err


class StoreBusy(RuntimeError):
    """Another process held the store's writer lock for longer than the busy timeout."""


class WriterLock:
    """One writer at a time across the server's processes (and threads) on one SQLite file.

    SQLite serialises writers itself, but a writer that finds the lock taken sleeps 1, 2, 5,
    10 … ms before each retry, longer than a whole vote takes; waiting on an advisory `flock` of
    a file beside the database instead retries every `POLL_S`. Like SQLite's busy timeout, a
    wait longer than `timeout_s` (a long CLI import, a stopped process) raises `StoreBusy`
    rather than freezing the server. The thread lock comes first because a `flock` belongs to
    an open file, not to a thread.
    """

    POLL_S = 0.0002

    def __init__(self, path: Path, timeout_s: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
        self.path, self.timeout_s = path, timeout_s
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreBusy(f"the store is busy: another process has held {self.path.name} "
                                    f"for over {self.timeout_s:g} s") from None
                time.sleep(self.POLL_S)

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._thread_lock.acquire(timeout=self.timeout_s):
            raise StoreBusy(f"the store is busy: a writer in this process has held it for over "
                            f"{self.timeout_s:g} s")
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._acquire()
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_writer_locks: dict[str, WriterLock | None] = {}
"""One lock object (one open file) per store, for the process's life."""


def _writer_lock(engine: Engine) -> WriterLock | None:
    """The `WriterLock` of a file-backed SQLite engine's database (None for other stores)."""
    key = str(engine.url)
    if key not in _writer_locks:
        database = engine.url.database
        file_backed = engine.dialect.name == "sqlite" and database and database != ":memory:"
        _writer_locks[key] = WriterLock(Path(database).resolve().with_name(
            Path(database).name + ".writer-lock")) if file_backed else None
    return _writer_locks[key]


@contextmanager
def writing(conn: Connection) -> Iterator[Connection]:
    """Turn `conn` (from `engine.connect()`, no transaction begun yet) into a write transaction:
    committed on success, rolled back on an exception.

    On SQLite it runs holding the database's `WriterLock`, so writers in several processes (the
    server's workers, the CLI) queue without SQLite's sleep-and-retry, and no reader-turned-writer
    ever finds its snapshot stale. The driver begins the SQLite transaction at the first write;
    reads before it see the latest commit, and with the lock held nobody else commits meanwhile.
    Reads made on `conn` before `writing` (authentication, say) run without the lock. On
    PostgreSQL it is a plain transaction (row locks and the `WHERE` guards of the claims do the
    work)."""
    lock = _writer_lock(conn.engine)
    if lock is None:
        with conn.begin():
            yield conn
        return
    with lock.held(), conn.begin():
        yield conn


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction (`writing`) from the start."""
    with engine.connect() as conn, writing(conn):
        yield conn


def checkpoint_in_background(engine: Engine,
                             interval_s: float = WAL_CHECKPOINT_INTERVAL_S) -> Callable[[], None]:
    """SQLite: copy the WAL into the database file from a thread, never inside a request.

    By default the connection whose COMMIT pushes the WAL past 1,000 pages runs the checkpoint
    there and then, two fsyncs included, which stalls the server's event loop (and every
    annotator waiting on it) for milliseconds. Here the engine's connections never checkpoint
    (`wal_autocheckpoint=0`) and a daemon thread runs a PASSIVE checkpoint every `interval_s`
    (it waits for no reader or writer; sqlite3 releases the GIL while it works). Durability is
    unchanged: a vote is in the WAL before its COMMIT returns; checkpoints only move it.
    Returns a function that stops the thread. Pooled connections are dropped so that every
    connection from now on has the setting.
    """
    disable_autocheckpoint(engine)
    stop = threading.Event()

    def run() -> None:
        raw = engine.raw_connection()
        try:
            while not stop.wait(interval_s):
                try:
                    raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as err:  # e.g. locked by another process: try next time
                    log.warning("WAL checkpoint failed: %s", err)
        finally:
            raw.close()

    thread = threading.Thread(target=run, name="wal-checkpoint", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=10)
    return halt


def disable_autocheckpoint(engine: Engine) -> None:
    """SQLite: the engine's connections never checkpoint the WAL themselves (see
    `checkpoint_in_background`); pooled connections are dropped so every new one has it."""
    event.listen(engine, "connect", _no_autocheckpoint)
    engine.dispose()


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (creates it in an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_store(url: str) -> Engine:
    """Engine for `url` with the schema migrated to the newest revision."""
    engine = make_engine(url)
    upgrade(engine)
    return engine
