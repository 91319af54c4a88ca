"""Files holding many documents: JSON, JSON lines (BEIR corpora) and CSV.

Each record becomes one Document or one Failure, so a bad record never costs the file's other
records. A record without an id gets "<file name>#line<N>" (JSONL), "#item<N>" (JSON list) or
"#row<N>" (CSV data row, header not counted); ids are stable as long as the file is.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from common.errors import DocumentError
from common.types import Document
from ingestion.formats.common import Failure, Item, ParseOptions, decode_text, read_nonempty

CSV_MAX_FIELD_CHARS = 16 * 1024 * 1024
"""A CSV cell may hold a whole document; the csv module's default limit (128 Ki chars) is too small."""
CSV_DELIMITERS = (",", ";", "\t")
"""Spreadsheets in some locales export ";"; the header line decides which one a file uses."""


def iter_json(path: Path, name: str, options: ParseOptions) -> Iterator[Item]:
    """A JSON array of {"id", "title", "text", "metadata"} objects, or one such object."""
    data = _load_json(decode_text(read_nonempty(path, name), name), name)
    if isinstance(data, dict):
        yield record_item(data, fallback_id=name, where=name)
    elif isinstance(data, list):
        for number, record in enumerate(data, start=1):
            yield record_item(record, fallback_id=f"{name}#item{number}", where=f"{name} item {number}")
    else:
        raise DocumentError(f"{name}: expected a JSON array of objects or one object, got {_kind(data)}")


def iter_jsonl(path: Path, name: str, options: ParseOptions) -> Iterator[Item]:
    """One JSON object per line, e.g. a BEIR corpus ({"_id", "title", "text"}); blank lines are skipped."""
    read_nonempty(path, name)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                yield _jsonl_item(raw, name, number)


def _jsonl_item(raw: bytes, name: str, number: int) -> Item:
    where, fallback_id = f"{name} line {number}", f"{name}#line{number}"
    try:
        record = _load_json(decode_text(raw, where), where)
    except DocumentError as exc:
        return Failure(fallback_id, exc.detail)
    return record_item(record, fallback_id=fallback_id, where=where)


def record_item(record: object, *, fallback_id: str, where: str) -> Item:
    """One JSON record as a Document, or a Failure saying where and why; unknown keys are ignored."""
    if not isinstance(record, dict):
        return Failure(fallback_id, f"{where}: expected a JSON object, got {_kind(record)}")
    try:
        doc_id = _record_id(record, fallback_id, where)
    except DocumentError as exc:
        return Failure(fallback_id, exc.detail)
    try:
        return _record_document(record, doc_id, where)
    except DocumentError as exc:
        return Failure(doc_id, exc.detail)


def _record_document(record: dict[str, Any], doc_id: str, where: str) -> Document:
    """Type-check text, title and metadata; a record with nothing to index is refused."""
    text, title, metadata = record.get("text"), record.get("title"), record.get("metadata")
    if text is None:
        raise DocumentError(f"{where}: 'text' is missing")
    if not isinstance(text, str):
        raise DocumentError(f"{where}: 'text' must be a string, got {_kind(text)}")
    if not text.strip():
        raise DocumentError(f"{where}: 'text' is empty")
    if title is not None and not isinstance(title, str):
        raise DocumentError(f"{where}: 'title' must be a string, got {_kind(title)}")
    if metadata is not None and not isinstance(metadata, dict):
        raise DocumentError(f"{where}: 'metadata' must be a JSON object, got {_kind(metadata)}")
    return Document(id=doc_id, text=text, title=title or "", metadata=metadata or {})


def _record_id(record: dict[str, Any], fallback_id: str, where: str) -> str:
    """ "id", else BEIR's "_id"; integers are accepted as ids (many corpora number their documents)."""
    value = record.get("id", record.get("_id"))
    if value is None:
        return fallback_id
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DocumentError(f"{where}: 'id' must be a non-empty string or an integer, got {value!r}")
    return value


def _load_json(text: str, where: str) -> Any:
    """Parse JSON; NaN and Infinity are refused here because the document store cannot hold them."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise DocumentError(f"{where}: not valid JSON ({exc})") from exc
    except RecursionError as exc:  # "[[[[..." thousands deep: the decoder's stack, not the process's
        raise DocumentError(f"{where}: not valid JSON (nested too deeply)") from exc


def _reject_constant(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not allowed")


def _kind(value: object) -> str:
    """A JSON type name for messages, which operators read: "array", not "list"."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def iter_csv(path: Path, name: str, options: ParseOptions) -> Iterator[Item]:
    """One document per data row; the text, id and title columns are chosen by `options`.

    Other columns go into metadata as strings. A missing id (column or cell) gives "<name>#row<N>".
    """
    rows = _csv_rows(decode_text(read_nonempty(path, name), name))
    columns = _header(next(rows, None), name, options)
    for number, (line, fields) in enumerate(rows, start=1):
        where, fallback_id = f"{name} row {number} (line {line})", f"{name}#row{number}"
        if isinstance(fields, str):
            yield Failure(fallback_id, f"{where}: {fields}")
        else:
            yield _row_item(fields, columns, where, fallback_id, options)


def _csv_rows(text: str) -> Iterator[tuple[int, list[str] | str]]:
    """(line, fields) of each non-blank record, header included; fields is the error if unreadable.

    The delimiter is the one used most in the header line ("," when none is: a one-column file).
    """
    csv.field_size_limit(max(csv.field_size_limit(), CSV_MAX_FIELD_CHARS))  # process-wide; only raised
    delimiter = max(CSV_DELIMITERS, key=text.split("\n", 1)[0].count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader resumes at the next line, so later rows still count
            yield reader.line_num, str(exc)
            continue
        if any(field.strip() for field in fields):  # blank lines and ",,," rows are not records
            yield reader.line_num, fields


def _header(first: tuple[int, list[str] | str] | None, name: str, options: ParseOptions) -> list[str]:
    """Column names, checked against the columns the caller asked for."""
    if first is None or isinstance(first[1], str):
        detail = first[1] if first else "the file has no rows"
        raise DocumentError(f"{name}: no readable CSV header row ({detail})")
    columns = [column.strip() for column in first[1]]
    listed = ", ".join(repr(c) for c in columns)
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        shown = ", ".join(map(repr, duplicates))
        raise DocumentError(f"{name}: duplicate column names {shown}; columns: {listed}")
    for role, column in (("text", options.text_column), ("title", options.title_column)):
        if column is not None and column not in columns:
            raise DocumentError(f"{name}: no {role} column {column!r}; columns: {listed}")
    return columns


def _row_item(
    fields: list[str], columns: list[str], where: str, fallback_id: str, options: ParseOptions
) -> Item:
    """One CSV row as a Document; a row longer than the header is refused (likely an unquoted comma)."""
    row = dict(zip(columns, fields, strict=False))
    doc_id = row.get(options.id_column, "").strip() or fallback_id
    if len(fields) > len(columns):
        return Failure(doc_id, f"{where}: {len(fields)} fields but the header has {len(columns)} columns")
    text = row.get(options.text_column, "")
    if not text.strip():
        return Failure(doc_id, f"{where}: column {options.text_column!r} is empty")
    title = row.get(options.title_column, "").strip() if options.title_column else ""
    used = {options.text_column, options.id_column, options.title_column}
    metadata = {column: row.get(column, "") for column in columns if column not in used}
    return Document(id=doc_id, text=text, title=title, metadata=metadata)
