"""Core statements compiled once per dialect and run on the driver's cursor: the per-vote path.

A vote runs about ten small statements. Through `Connection.execute` each one pays for SQLAlchemy's
execution context, parameter construction and result wrapping, measured at 14.5 µs for a
prebuilt one-row SELECT against 2.2 µs through the driver, and about 40 % of a vote's CPU in all
(py-spy). `Prepared` keeps everything else SQLAlchemy gives — the statement is still built
with Core, compiled by the connection's dialect (SQLite or PostgreSQL, with its placeholders and
casts), and its values still go through the column types' own bind and result processors (JSON
in and out, SQLite's integers as booleans) — and skips only that per-call machinery. It runs
inside the connection's transaction, on the same driver connection. What it gives up: driver
errors arrive as the driver's own exceptions (not wrapped in `sqlalchemy.exc`), and SQLAlchemy's
execution events and `echo` logging do not see these statements.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql.base import Executable


@dataclass
class _Compiled:
    sql: str
    binds: tuple[tuple[str, Any, bool, Callable[[Any], Any] | None], ...]
    """(name, value when not required, required, bind processor) in placeholder order."""
    positional: bool
    columns: list[Any]
    row: type | None
    """Row type (a namedtuple of the result columns' keys), None for a statement without rows."""
    dialect: Any
    result_processors: tuple[Callable[[Any], Any] | None, ...] | None = None
    """Set at the first result: some processors depend on the driver's type codes."""

    def processors(self, description: Any) -> tuple[Callable[[Any], Any] | None, ...]:
        if self.result_processors is None:
            self.result_processors = tuple(
                column.type.dialect_impl(self.dialect).result_processor(self.dialect, described[1])
                for column, described in zip(self.columns, description))
        return self.result_processors


class Rows:
    """What a `Prepared` call returns: the driver cursor's rows, processed on the way out."""

    def __init__(self, cursor: Any, compiled: _Compiled) -> None:
        self.cursor, self.compiled = cursor, compiled
        self.rowcount = cursor.rowcount  # of INSERT / UPDATE / DELETE without RETURNING (SQLite: 0 with it)
        self.description = cursor.description
        if self.description is None:  # no rows to read
            cursor.close()

    def _make(self, raw: tuple) -> Any:
        procs = self.compiled.processors(self.description)
        return self.compiled.row(*(v if p is None else p(v) for v, p in zip(raw, procs)))

    def first(self) -> Any:
        raw = self.cursor.fetchone()
        self.cursor.close()
        return None if raw is None else self._make(raw)

    def one(self) -> Any:
        row = self.first()
        if row is None:
            raise LookupError("the statement returned no row where one was required")
        return row

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]

    def all(self) -> list[Any]:
        rows = self.cursor.fetchall()
        self.cursor.close()
        return [self._make(raw) for raw in rows]


class Prepared:
    """A Core statement run with `prepared(conn, {name: value})` → `Rows` (`first`, `one`,
    `scalar`, `all`, `rowcount`). Every bind parameter must be named (`bindparam`) or constant."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._by_dialect: dict[tuple[str, str], _Compiled] = {}

    def _compile(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        compiled = self.statement.compile(dialect=dialect)
        sql = str(compiled)
        if "POSTCOMPILE" in sql:
            raise ValueError(f"statement needs per-call rendering, not preparable: {sql}")
        by_name = {name: bp for bp, name in compiled.bind_names.items()}
        order = compiled.positiontup if compiled.positional else list(by_name)
        binds = tuple((name, by_name[name].value, by_name[name].required,
                       by_name[name].type.dialect_impl(dialect).bind_processor(dialect))
                      for name in order)
        columns = list(getattr(self.statement, "exported_columns", ()))
        row = namedtuple("Row", [c.key or f"c{i}" for i, c in enumerate(columns)], rename=True) \
            if columns else None
        return _Compiled(sql, binds, compiled.positional, columns, row, dialect)

    def __call__(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Rows:
        key = (conn.dialect.name, conn.dialect.driver)
        compiled = self._by_dialect.get(key)
        if compiled is None:
            compiled = self._by_dialect[key] = self._compile(conn)
        params = params or {}
        values = []
        for name, constant, required, process in compiled.binds:
            value = params[name] if required else params.get(name, constant)
            values.append(value if process is None else process(value))
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute(compiled.sql, values if compiled.positional
                       else dict(zip((b[0] for b in compiled.binds), values)))
        return Rows(cursor, compiled)
