"""Errors that point at the bad record, and the tally of records skipped on purpose.

Every problem with input data is a `DataError` whose message reads
`data/pairs.jsonl:17: field 'chosen': must not be empty` — file, line (for Parquet and `datasets`
folders the 1-based row), dotted field path, problem. Each error also carries a short `reason`
(`empty`, `missing_field`, …) under which `SkipReport` counts it when the caller asked to skip bad
records instead of stopping at the first one.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

ON_ERROR = ("raise", "skip")
"""What a reader does with a bad record: stop with a `DataError`, or leave it out and count it."""
MAX_EXAMPLES = 3
"""Example messages a `SkipReport` keeps per reason (enough to find the pattern, not a dump)."""

# Pydantic error types that mean "the value has the wrong type", with the word for what was wanted.
_WANTED = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "a list",
    "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
}
_RANGE = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}
_REASONS = {"missing": "missing_field", "extra_forbidden": "unknown_field", "too_short": "wrong_length",
            "too_long": "wrong_length", "literal_error": "invalid_value", "value_error": "invalid"}
# In a union (`str | list[Message]`) pydantic adds the member's name to the location; these are not
# fields and are dropped from the path.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list|dict)$|[\[(]")


class DataError(ValueError):
    """A bad input record (or file). `str(err)` is `file:line: field 'x': problem`.

    `reason` is the short category a `SkipReport` counts it under; `file`/`line` are filled in by
    the reader (`at`), so code that checks a bare row can raise without knowing where it came from.
    """

    def __init__(self, problem: str, *, field: str | None = None, reason: str = "invalid",
                 file: str | None = None, line: int | None = None) -> None:
        self.problem, self.field, self.reason, self.file, self.line = problem, field, reason, file, line
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else (self.file or "")
        what = f"field '{self.field}': {self.problem}" if self.field else self.problem
        return f"{where}: {what}" if where else what

    def at(self, file: str, line: int | None) -> "DataError":
        """The same error, located at `file:line`."""
        return DataError(self.problem, field=self.field, reason=self.reason, file=file, line=line)


@dataclass
class SkipReport:
    """Records left out, counted by reason, with the first few messages of each reason.

    Stages write `as_dict()` into their run log and `summary.json`, so no record disappears
    without a trace.
    """

    counts: Counter = field(default_factory=Counter)
    """reason → number of records skipped for it."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """reason → the first `MAX_EXAMPLES` messages (with file:line)."""

    def add(self, error: DataError) -> None:
        """Count one skipped record."""
        self.count(error.reason, str(error))

    def count(self, reason: str, example: str) -> None:
        """Count one record left out for `reason` (conversions use this for dropped ties)."""
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example)

    def merge(self, other: "SkipReport") -> "SkipReport":
        """Add another report's counts and examples into this one; returns self."""
        for reason, n in other.counts.items():
            self.counts[reason] += n
            kept = self.examples.setdefault(reason, [])
            kept.extend(other.examples.get(reason, [])[: MAX_EXAMPLES - len(kept)])
        return self

    @property
    def total(self) -> int:
        """Number of records skipped, all reasons together."""
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        """`{"total": n, "by_reason": {reason: n}, "examples": {reason: [message, …]}}`."""
        reasons = sorted(self.counts)
        return {"total": self.total, "by_reason": {r: self.counts[r] for r in reasons},
                "examples": {r: list(self.examples.get(r, [])) for r in reasons}}

    def __str__(self) -> str:
        if not self.total:
            return "no records skipped"
        parts = ", ".join(f"{r}: {self.counts[r]}" for r in sorted(self.counts))
        return f"{self.total} records skipped ({parts})"


def check_on_error(on_error: str) -> None:
    """Refuse an `on_error` value other than "raise" or "skip"."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def rename_field(path: str | None, rename: dict[str, str]) -> str | None:
    """Replace the first component of a dotted field path by the input column it came from."""
    if path is None:
        return None
    head, dot, rest = path.partition(".")
    return rename.get(head, head) + dot + rest


def _path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(p for p in loc if isinstance(p, int) or not _UNION_TAG.search(p))


def _dotted(path: tuple[Any, ...], rename: dict[str, str]) -> str | None:
    return rename_field(".".join(str(p) for p in path), rename) if path else None


def _bounds_text(schema: type[BaseModel], path: tuple[Any, ...], ctx: dict[str, Any]) -> str:
    """'between 1 and 5' when the top-level field declares both bounds, else the one that failed."""
    if len(path) == 1 and path[0] in schema.model_fields:
        marks = {type(m).__name__: m for m in schema.model_fields[path[0]].metadata}
        if "Ge" in marks and "Le" in marks:
            return f"between {marks['Ge'].ge} and {marks['Le'].le}"
    (name, bound), = ctx.items()
    return {"ge": ">=", "le": "<=", "gt": ">", "lt": "<"}[name] + f" {bound}"


def _problem(err: dict[str, Any], siblings: list[dict[str, Any]], schema: type[BaseModel],
             path: tuple[Any, ...]) -> tuple[str, str]:
    """(reason, problem text) for one pydantic error; `siblings` are the other union members'
    errors at the same path."""
    kind, got = err["type"], err.get("input")
    if kind in _WANTED:
        wanted = " or ".join(dict.fromkeys(_WANTED.get(e["type"], e["type"]) for e in siblings))
        if got is None:  # how Parquet and `datasets` columns say "absent in this row"
            return "missing_field", f"is null (must be {wanted})"
        return "wrong_type", f"must be {wanted}, got {type(got).__name__}"
    if kind in _RANGE:
        return "out_of_range", f"must be {_bounds_text(schema, path, err['ctx'])}, got {got!r}"
    if kind == "missing":
        return "missing_field", "is missing"
    if kind == "extra_forbidden":
        known = ", ".join(schema.model_fields) if len(path) == 1 else ""
        return "unknown_field", "unknown field" + (f"; {schema.__name__} fields are: {known}" if known else "")
    if kind == "literal_error":
        return "invalid_value", f"must be one of {err['ctx']['expected']}, got {got!r}"
    message = err["msg"].removeprefix("Value error, ")
    return _REASONS.get(kind, kind), message[:1].lower() + message[1:]


def from_validation_error(exc: ValidationError, schema: type[BaseModel],
                          rename: dict[str, str] | None = None) -> DataError:
    """Turn pydantic's error into one `DataError` naming the most specific field at fault.

    `rename` maps schema field names back to the input's column names (a `messages` column that
    became `prompt` is reported as `messages`). When several fields are wrong the message names the
    first and counts the others.
    """
    errors = exc.errors()
    by_path: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in errors:
        by_path.setdefault(_path(err["loc"]), []).append(err)
    # The deepest path is the most specific: for a prompt given as a list, the bad message's role
    # rather than the "is not a string" complaint from the other union member.
    path = max(by_path, key=len)
    reason, problem = _problem(by_path[path][0], by_path[path], schema, path)
    others = [_dotted(other, rename or {}) or "record" for other in by_path
              if other != path and other[:1] != path[:1]]
    if others:
        problem += f" (also: {', '.join(repr(o) for o in others)})"
    return DataError(problem, field=_dotted(path, rename or {}), reason=reason)
