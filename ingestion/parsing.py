"""Turning uploaded files and stored JSON lines into Documents.

Torch-free on purpose: the API imports this module (for `sanitize_filename`, `SUPPORTED_SUFFIXES`
and the JSON-lines writer) and must stay light; format modules import their libraries lazily.
New formats are added by registering a parser in `PARSERS` (one document per file) or
`RECORD_PARSERS` (many documents per file).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from common.errors import DocumentError, InvalidRequest
from common.isolation import NEVER_CAUGHT
from common.types import Document
from ingestion.archive import (
    NO_FILES,
    ArchiveLimits,
    ExpansionBudget,
    declared_size,
    iter_zip_members,
    list_zip_members,
)
from ingestion.formats.common import (
    DEFAULT_PARSE_OPTIONS,
    MAX_FILENAME_CHARS,
    MAX_SUFFIX_CHARS,
    UTF8_BOM,
    Failure,
    Item,
    ParseOptions,
    decode_text,
    item_id,
    read_nonempty,
    sanitize_filename,
)
from ingestion.formats.html import parse_html
from ingestion.formats.pdf import parse_pdf
from ingestion.formats.records import iter_csv, iter_json, iter_jsonl
from ingestion.formats.text import markdown_title, parse_markdown, parse_text
from ingestion.formats.word import parse_docx

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MAX_FILENAME_CHARS",
    "MAX_SUFFIX_CHARS",
    "PARSERS",
    "RECORD_PARSERS",
    "SUPPORTED_SUFFIXES",
    "UTF8_BOM",
    "Failure",
    "Item",
    "ParseOptions",
    "Parser",
    "RecordParser",
    "decode_text",
    "item_id",
    "iter_file_documents",
    "markdown_title",
    "parse_file",
    "precheck",
    "read_documents_jsonl",
    "sanitize_filename",
    "unsupported_reason",
    "write_documents_jsonl",
]

log = logging.getLogger(__name__)

Parser = Callable[[Path, str], Document]
"""A parser reads the stored upload at `path`; `name` is the client's (sanitised) file name."""
RecordParser = Callable[[Path, str, ParseOptions], Iterator[Item]]
"""Like `Parser` for files of many records: one Document or Failure per record."""

PARSERS: dict[str, Parser] = {
    ".txt": parse_text,
    ".md": parse_markdown,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
}
"""File suffix (lower case, with the dot) -> parser of a one-document format. Register new formats here."""

RECORD_PARSERS: dict[str, RecordParser] = {
    ".json": iter_json,
    ".jsonl": iter_jsonl,
    ".csv": iter_csv,
}
"""File suffix -> parser of a format holding many documents."""

ARCHIVE_SUFFIXES: tuple[str, ...] = (".zip",)

SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted({*PARSERS, *RECORD_PARSERS, *ARCHIVE_SUFFIXES}))


def parse_file(path: Path, *, name: str) -> Document:
    """Parse a one-document upload stored at `path`; the format is chosen by the suffix of `name`.

    Files that hold many documents (records, archives) need `iter_file_documents`.
    """
    suffix = _suffix(name)
    parser = PARSERS.get(suffix)
    if parser is not None:
        return parser(path, name)
    if suffix in RECORD_PARSERS or suffix in ARCHIVE_SUFFIXES:
        raise DocumentError(f"{name}: a {suffix} file holds many documents; read it with iter_file_documents")
    raise DocumentError(unsupported_reason(name))


def precheck(path: Path, name: str, *, limits: ArchiveLimits | None = None) -> int:
    """The cheap refusals a parser would make anyway, so the API can answer 422 at once.

    Reads a zip's central directory (unsafe paths, zip bombs), a PDF's magic bytes, or a text file's
    encoding; never a parsing library or a model. Raises DocumentError with the parser's own words.
    Returns the bytes a zip declares it expands to (0 for other files), so the API can hold an
    upload's archives together to their budget before a worker extracts any of them.
    """
    suffix = _suffix(name)
    if suffix in ARCHIVE_SUFFIXES:
        return declared_size(path, name=name, limits=limits)
    if suffix == ".pdf" and not read_nonempty(path, name).startswith(b"%PDF-"):
        raise DocumentError(f"{name}: not a PDF file (it does not start with %PDF-)")
    if suffix in (".txt", ".md"):
        decode_text(read_nonempty(path, name), name)
    return 0


def unsupported_reason(name: str) -> str:
    """Why a file type is refused, naming its suffix and every supported one."""
    suffix = _suffix(name)
    shown = f"'{suffix}'" if suffix else "none"
    return f"{name}: unsupported file type (suffix {shown}); supported: {', '.join(SUPPORTED_SUFFIXES)}"


def iter_file_documents(
    path: Path,
    *,
    name: str,
    options: ParseOptions = DEFAULT_PARSE_OPTIONS,
    archive_limits: ArchiveLimits | None = None,
    budget: ExpansionBudget | None = None,
) -> Iterator[Document | Failure]:
    """Every document of one upload, or a Failure for each that cannot be read; the rest go through.

    A one-document file yields one item (its id is `name`); records and archive members yield one
    each. Raises DocumentError only when a zip archive is refused as a whole (unreadable, unsafe
    paths or links, zip bomb, or over the upload's `budget`, which one job shares across all its
    files): before any document if its central directory shows it, else while extracting.
    Ids repeated within or across files are failed by `ingestion.validation.checked`, over the upload.
    """
    if _suffix(name) in ARCHIVE_SUFFIXES:
        yield from _archive_items(path, name, options, archive_limits or ArchiveLimits(), budget)
    else:
        yield from _file_items(path, name, options)


def _file_items(path: Path, name: str, options: ParseOptions) -> Iterator[Item]:
    """Documents of one (non-archive) file; anything that goes wrong fails this file only."""
    try:
        parser = RECORD_PARSERS.get(_suffix(name))
        if parser is None:
            yield parse_file(path, name=name)
            return
        count = 0
        for item in parser(path, name, options):
            count += 1
            yield item
        if not count:
            yield Failure(name, f"{name}: contains no documents")
    except DocumentError as exc:
        yield Failure(name, exc.detail)
    except NEVER_CAUGHT:
        raise
    except Exception as exc:  # a parser bug or library crash must not cost the other files
        log.exception("parsing %s failed unexpectedly", name)
        yield Failure(name, f"{name}: could not be parsed ({type(exc).__name__}: {exc})")


def _archive_items(
    path: Path, name: str, options: ParseOptions, limits: ArchiveLimits, budget: ExpansionBudget | None
) -> Iterator[Item]:
    """Documents of every supported member ("<archive>/<member path>"), a Failure for each other.

    Members are extracted one at a time into a private temporary directory and deleted once read;
    a refusal while streaming deletes the directory with whatever it still holds.
    """
    members = list_zip_members(path, name=name, limits=limits, budget=budget)  # refuses up front
    if not members:
        yield Failure(name, f"{name}: {NO_FILES}")
        return
    for member in members:
        if not _is_parseable(member):
            yield Failure(f"{name}/{member}", _member_refusal(f"{name}/{member}"))
    with tempfile.TemporaryDirectory(prefix="quarry-zip-") as tmp:
        extracted = iter_zip_members(
            path, Path(tmp), name=name, select=_is_parseable, limits=limits, budget=budget
        )
        for member_path, member in extracted:
            try:
                yield from _file_items(member_path, f"{name}/{member}", options)
            finally:
                member_path.unlink(missing_ok=True)


def _is_parseable(member: str) -> bool:
    suffix = _suffix(member)
    return suffix in PARSERS or suffix in RECORD_PARSERS


def _member_refusal(doc_id: str) -> str:
    if _suffix(doc_id) in ARCHIVE_SUFFIXES:
        return f"{doc_id}: nested archives are not supported; unpack it and upload its files"
    return unsupported_reason(doc_id)


def _suffix(name: str) -> str:
    return Path(name).suffix.lower()


def write_documents_jsonl(path: Path, docs: Iterable[Document]) -> int:
    """Store documents as JSON lines for the ingest task; returns how many were written.

    Written to a temporary file and renamed, so a worker never reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for doc in docs:
                out.write(_document_line(doc))
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _document_line(doc: Document) -> str:
    """One JSON line; metadata that JSON cannot represent is the client's error."""
    record = {"id": doc.id, "text": doc.text, "title": doc.title, "metadata": doc.metadata}
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"document {doc.id}: metadata is not JSON-serialisable ({exc})") from exc


def read_documents_jsonl(path: Path) -> Iterator[Document]:
    """Yield the Documents stored by `write_documents_jsonl`; a malformed line raises DocumentError.

    Lines are split on b"\\n" only (never str.splitlines), so U+2028 and friends inside text are safe.
    """
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                yield _parse_document_line(raw, f"{path.name} line {number}")


def _parse_document_line(raw: bytes, where: str) -> Document:
    """Decode and type-check one stored record."""
    try:
        record: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DocumentError(f"{where}: not a valid JSON line ({exc})") from exc
    if not isinstance(record, dict):
        raise DocumentError(f"{where}: expected a JSON object, got {type(record).__name__}")
    doc_id = record.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        raise DocumentError(f"{where}: 'id' must be a non-empty string")
    text, title, metadata = record.get("text"), record.get("title", ""), record.get("metadata", {})
    if not isinstance(text, str):
        raise DocumentError(f"{where}: 'text' must be a string")
    if not isinstance(title, str):
        raise DocumentError(f"{where}: 'title' must be a string")
    if not isinstance(metadata, dict):
        raise DocumentError(f"{where}: 'metadata' must be a JSON object")
    return Document(id=doc_id, text=text, title=title, metadata=metadata)
