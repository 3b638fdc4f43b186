"""Reading and writing records as JSONL/JSON, Parquet, or a Hugging Face `datasets` folder.

The format comes from the path (`.jsonl`, `.jsonl.gz`, `.json`, `.json.gz`, `.parquet`, a folder
or a suffix-less path = `save_to_disk` folder) unless `format=` names it. Reading maps each row
through its layout (`rlhfkit.data.layouts`) onto the schema and either stops at the first bad
row (`on_error="raise"`) or skips it and counts it by reason (`on_error="skip"`). Writing is
atomic: a temporary file or folder beside the target, renamed into place when complete.

In Parquet and `datasets` folders, a column whose values Arrow cannot store exactly (free-form
`meta` dicts with differing keys, a mix of text and chat prompts) is stored as JSON text; the
list of such columns travels with the file (Parquet schema metadata `rlhfkit`, or `rlhfkit.json`
inside the folder) so the reader decodes them.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from rlhfkit.data.errors import DataError, SkipReport, check_on_error, rename_field
from rlhfkit.data.layouts import detect_layout, get_layout, parse_row, schema_for
from rlhfkit.data.lengths import TokenizerFn, token_length_error
from rlhfkit.data.schemas import RECORD_TYPES, Record

Format = Literal["jsonl", "json", "parquet", "datasets"]
FORMATS = ("jsonl", "json", "parquet", "datasets")
META_KEY = "rlhfkit"
"""Parquet schema-metadata key (and `<folder>/rlhfkit.json`) holding {"kind", "json_columns"}."""
SIDECAR = "rlhfkit.json"
BATCH_ROWS = 1024
"""Rows per Arrow batch when reading Parquet / `datasets` (bounds memory, not results)."""

log = logging.getLogger(__name__)
Row = tuple[int, "dict[str, Any] | DataError"]


def detect_format(path: str | Path) -> str:
    """The format implied by `path`; an unknown suffix is an error listing the accepted ones."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    if name.endswith((".json", ".json.gz")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if path.is_dir() or (not path.exists() and not path.suffix):
        return "datasets"
    raise ValueError(f"{path}: cannot tell the format from the name; use .jsonl, .jsonl.gz, .json, "
                     f".json.gz, .parquet or a folder (datasets save_to_disk), or pass format= "
                     f"one of {FORMATS}")


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_binary(path: Path, mode: str = "rb", compress: bool | None = None):
    compress = _is_gzip(path) if compress is None else compress
    return gzip.open(path, mode) if compress else open(path, mode)


def _row(line: int, value: Any) -> Row:
    if isinstance(value, dict):
        return line, value
    return line, DataError(f"expected a JSON object, got {type(value).__name__}", reason="wrong_type")


def _iter_jsonl(lines: Iterable[bytes]) -> Iterator[Row]:
    for line, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue  # blank lines (a trailing newline, spacing) are not records
        try:
            yield _row(line, json.loads(raw))
        except json.JSONDecodeError as exc:
            yield line, DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", reason="malformed_json")
        except UnicodeDecodeError as exc:
            yield line, DataError(f"not UTF-8 text: {exc.reason}", reason="malformed_json")


def _iter_json_array(text: str, name: str) -> Iterator[Row]:
    """Elements of a JSON array, each with the line it starts on. A syntax error ends the file
    (nothing after it can be located), so it is raised, not skipped."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)

    def skip_space(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    while True:
        start = skip_space(pos)
        line += text.count("\n", pos, start)
        if text.startswith("]", start):
            return
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", reason="malformed_json",
                            file=name, line=exc.lineno) from None
        yield _row(line, value)
        line += text.count("\n", start, end)
        pos = skip_space(end)
        line += text.count("\n", end, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            raise DataError("malformed JSON: expected ',' or ']' after an element", reason="malformed_json",
                            file=name, line=line)


def _iter_json(path: Path, name: str) -> Iterator[Row]:
    """A `.json` file: a JSON array of objects, or JSON lines (as `datasets` writes them)."""
    with _open_binary(path) as fh:
        data = fh.read()
    if not data.lstrip().startswith(b"["):
        yield from _iter_jsonl(data.splitlines())
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", reason="malformed_json",
                        file=name) from None
    yield from _iter_json_array(text, name)


def _decode_columns(rows: list[dict[str, Any]], first_row: int, json_columns: list[str]) -> Iterator[Row]:
    for line, row in enumerate(rows, start=first_row):
        try:
            for column in json_columns:
                if isinstance(row.get(column), str):
                    row[column] = json.loads(row[column])
        except json.JSONDecodeError as exc:
            yield line, DataError(f"malformed JSON: {exc.msg}", field=column, reason="malformed_json")
            continue
        yield line, row


def _iter_tables(tables: Iterable[Any], info: dict[str, Any]) -> Iterator[Row]:
    first = 1
    for table in tables:
        rows = table.to_pylist()
        yield from _decode_columns(rows, first, info.get("json_columns", []))
        first += len(rows)


def _check_kind(info: dict[str, Any], kind: str, name: str) -> None:
    written = info.get("kind")
    if written and written != kind:
        raise DataError(f"holds {written!r} records, not {kind!r}", reason="wrong_kind", file=name)


def _iter_parquet(path: Path, name: str, kind: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for an unreadable file
        raise DataError(f"cannot read as Parquet: {exc}", reason="unreadable", file=name) from None
    meta = (reader.schema_arrow.metadata or {}).get(META_KEY.encode())
    info = json.loads(meta) if meta else {}
    _check_kind(info, kind, name)
    yield from _iter_tables(reader.iter_batches(batch_size=BATCH_ROWS), info)


def _iter_datasets(path: Path, name: str, kind: str) -> Iterator[Row]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, … for a bad folder
        raise DataError(f"cannot load as a datasets folder: {exc}", reason="unreadable", file=name) from None
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"is a DatasetDict with splits {sorted(loaded)}; pass one split's folder, "
                        f"e.g. {path / sorted(loaded)[0]}", reason="unreadable", file=name)
    sidecar = path / SIDECAR
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    _check_kind(info, kind, name)
    yield from _iter_tables(loaded.with_format("arrow").iter(batch_size=BATCH_ROWS), info)


def iter_rows(path: str | Path, kind: str, format: Format | None = None) -> Iterator[Row]:
    """(line, raw row dict or the `DataError` that stopped it) for every row of a file.

    Line is the 1-based line for JSON/JSONL and the 1-based row for Parquet and `datasets`.
    File-level problems (missing file, unreadable folder) raise at once.
    """
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats are: {', '.join(FORMATS)}")
    if not path.exists():
        raise DataError("no such file or folder", reason="unreadable", file=str(path))
    if fmt in ("jsonl", "json"):
        try:
            if fmt == "json":
                yield from _iter_json(path, str(path))
            else:
                with _open_binary(path) as fh:
                    yield from _iter_jsonl(fh)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"cannot decompress: {exc}", reason="unreadable", file=str(path)) from None
    elif fmt == "parquet":
        yield from _iter_parquet(path, str(path), kind)
    else:
        yield from _iter_datasets(path, str(path), kind)


def read_records(path: str | Path, kind: str, *, layout: str | None = None,
                 on_error: Literal["raise", "skip"] = "raise", limit: int | None = None,
                 format: Format | None = None, tokenizer_fn: TokenizerFn | None = None,
                 max_tokens: int | None = None, max_prompt_tokens: int | None = None,
                 ) -> tuple[list[Record], SkipReport]:
    """(records, skip report) from a JSONL/JSON, Parquet or `datasets` file of `kind` records.

    The layout is detected from the first readable row unless `layout=` names it; an unknown
    layout always raises. `on_error="raise"` stops at the first bad row with a `DataError`
    (`file:line: field 'x': problem`); `"skip"` leaves bad rows out and counts them by reason.
    `limit` stops after that many good records. With `tokenizer_fn` and `max_tokens` the token
    length check (`rlhfkit.data.lengths`) runs too, so long records are reported by line.
    """
    check_on_error(on_error)
    schema_for(kind)
    name, skips, records, moved = str(path), SkipReport(), [], set()
    chosen = get_layout(kind, layout) if layout else None
    for line, row in iter_rows(path, kind, format):
        if limit is not None and len(records) >= limit:
            break
        try:
            if isinstance(row, DataError):
                raise row
            if chosen is None:
                chosen = get_layout(kind, detect_layout(row, kind))
            record = parse_row(row, kind, chosen, moved)
            error = (token_length_error(record, tokenizer_fn, max_tokens, max_prompt_tokens)
                     if tokenizer_fn is not None and max_tokens is not None else None)
            if error is not None:
                raise DataError(error.problem, field=rename_field(error.field, chosen.rename),
                                reason=error.reason)
        except DataError as exc:
            located = exc.at(name, line)
            if on_error == "raise" or exc.reason == "unknown_layout":
                raise located from None
            skips.add(located)
            continue
        records.append(record)
    if moved:
        log.warning("%s: columns %s are not %s fields; kept under meta", name, sorted(moved), kind)
    log.info("%s: read %d %s records (layout %s); %s", name, len(records), kind,
             chosen.name if chosen else "-", skips)
    return records, skips


def _kind_of(records: list[Record], kind: str | None) -> str | None:
    kinds = {name for name, cls in RECORD_TYPES.items() for r in records if type(r) is cls}
    if len(kinds) > 1 or (kind and kinds and kinds != {kind}):
        raise ValueError(f"cannot write records of several kinds together: {sorted(kinds | {kind} - {None})}")
    if records and not kinds:
        raise ValueError(f"not a record type: {type(records[0]).__name__}")
    return kinds.pop() if kinds else kind


def _has_empty_struct(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        return arrow_type.num_fields == 0 or any(_has_empty_struct(f.type) for f in arrow_type)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _has_empty_struct(arrow_type.value_type)
    return False


def _arrow_column(values: list[Any]) -> tuple[Any, bool]:
    """(Arrow array, stored as JSON?). A column is stored natively only when reading it back
    gives exactly the same JSON (no keys added to dicts, no ints turned into floats, no empty
    structs, which Parquet cannot hold); otherwise each value is kept as JSON text."""
    import pyarrow as pa

    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        array = None  # mixed types Arrow cannot hold in one column: JSON text below
    if array is not None and not _has_empty_struct(array.type) and json.dumps(array.to_pylist()) == json.dumps(values):
        return array, False
    return pa.array([json.dumps(v, ensure_ascii=False) for v in values], pa.string()), True


def _to_table(rows: list[dict[str, Any]], kind: str | None) -> tuple[Any, dict[str, Any]]:
    """(Arrow table, info for the reader) from record dicts of one kind."""
    import pyarrow as pa

    columns = list(rows[0]) if rows else list(RECORD_TYPES[kind].model_fields) if kind else []
    arrays, json_columns = {}, []
    for column in columns:
        arrays[column], as_json = _arrow_column([row[column] for row in rows])
        if as_json:
            json_columns.append(column)
    return pa.table(arrays), {"kind": kind, "json_columns": json_columns}


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block completes, move it into place (a file
    by one rename; a folder by moving the old one aside first), else remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.exists() and (path.is_dir() or tmp.is_dir()):
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_json_text(tmp: Path, rows: list[dict[str, Any]], array: bool, compress: bool) -> None:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    # A JSON array with one element per line, so line N+1 holds record N (and errors can say so).
    text = ("[\n" + ",\n".join(lines) + "\n]\n") if array else "".join(line + "\n" for line in lines)
    with _open_binary(tmp, "wb", compress) as fh:
        fh.write(text.encode("utf-8"))


def _write_datasets(tmp: Path, table: Any, info: dict[str, Any]) -> None:
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        # datasets cannot load back a folder with zero shards, which is what 0 rows gives by default.
        datasets.Dataset(table).save_to_disk(str(tmp), num_shards=1 if table.num_rows == 0 else None)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    (tmp / SIDECAR).write_text(json.dumps(info))


def write_records(path: str | Path, records: Iterable[Record], *, format: Format | None = None,
                  kind: str | None = None) -> Path:
    """Write records of one kind to `path` atomically; returns the path.

    Format from the suffix (see `detect_format`) unless `format=` names it; `.gz` compresses
    JSON/JSONL. Every field is written, defaults included, so files are self-describing. `kind`
    is needed only to give an empty Parquet/`datasets` file its columns.
    """
    path, records = Path(path), list(records)
    fmt = format or detect_format(path)
    kind = _kind_of(records, kind)
    rows = [record.model_dump(mode="json") for record in records]
    with _atomic(path) as tmp:
        if fmt in ("jsonl", "json"):
            _write_json_text(tmp, rows, array=fmt == "json", compress=_is_gzip(path))
        elif fmt in ("parquet", "datasets"):
            table, info = _to_table(rows, kind)
            if fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(info)}), tmp)
            else:
                _write_datasets(tmp, table, info)
        else:
            raise ValueError(f"unknown format {fmt!r}; formats are: {', '.join(FORMATS)}")
    log.info("%s: wrote %d %s records", path, len(rows), kind)
    return path
