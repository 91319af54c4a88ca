"""Turning uploaded files and stored JSON lines into Documents.

Torch-free on purpose: the API imports this module (for `sanitize_filename` and the JSON-lines
writer) and must stay light. New formats are added by registering a parser in `PARSERS`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from common.errors import DocumentError, InvalidRequest
from common.types import Document

Parser = Callable[[Path, str], Document]
"""A parser reads the stored upload at `path`; `name` is the client's (sanitised) file name."""

UTF8_BOM = b"\xef\xbb\xbf"
MAX_FILENAME_CHARS = 200
MAX_SUFFIX_CHARS = 16
"""A longer "suffix" (e.g. "a.<300 chars>") is not a real extension and is not preserved on truncation."""

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._ -]")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def decode_text(data: bytes, name: str) -> str:
    """Strict UTF-8 (optional BOM) to str with normalised newlines; errors name the byte offset."""
    bom = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{name}: not valid UTF-8 text (byte offset {bom + exc.start})") from exc
    if "\x00" in text:
        offset = bom + data[bom:].index(b"\x00")
        raise DocumentError(f"{name}: contains NUL bytes, not a text file (byte offset {offset})")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_text(path: Path, name: str) -> str:
    """Read and decode a text upload, rejecting files with nothing to index."""
    data = path.read_bytes()
    if not data:
        raise DocumentError(f"{name}: file is empty")
    text = decode_text(data, name)
    if not text.strip():
        raise DocumentError(f"{name}: file contains only whitespace")
    return text


def parse_text(path: Path, name: str) -> Document:
    """Plain text: the whole file is the body; there is no reliable title, so none is guessed."""
    return Document(id=name, text=_read_text(path, name))


def parse_markdown(path: Path, name: str) -> Document:
    """Markdown: the body is kept as written; the first ATX heading becomes the title."""
    text = _read_text(path, name)
    return Document(id=name, text=text, title=markdown_title(text))


def markdown_title(text: str) -> str:
    """Text of the first non-empty ATX heading ("# Title"), skipping front matter and code fences."""
    in_fence = ""
    for line in _skip_front_matter(text.split("\n")):
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            if not in_fence:
                in_fence = marker
            elif marker[0] == in_fence[0] and len(marker) >= len(in_fence):
                in_fence = ""
            continue
        heading = _ATX_HEADING.match(line)
        if not in_fence and heading and (heading.group(2) or "").strip():
            return (heading.group(2) or "").strip()
    return ""


def _skip_front_matter(lines: list[str]) -> list[str]:
    """Drop a leading YAML front-matter block, whose "# comments" are not headings."""
    if lines and lines[0].strip() == "---":
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() in ("---", "..."):
                return lines[i + 1 :]
    return lines


PARSERS: dict[str, Parser] = {
    ".txt": parse_text,
    ".md": parse_markdown,
}
"""File suffix (lower case, with the dot) -> parser. Register new formats here."""

SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(PARSERS))


def parse_file(path: Path, *, name: str) -> Document:
    """Parse the upload stored at `path`; the format is chosen by the suffix of the client's `name`."""
    suffix = Path(name).suffix.lower()
    parser = PARSERS.get(suffix)
    if parser is None:
        shown = f"'{suffix}'" if suffix else "none"
        raise DocumentError(
            f"{name}: unsupported file type (suffix {shown}); supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return parser(path, name)


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


def sanitize_filename(name: str) -> str:
    """A safe base name for storing an upload: no directories, no hidden files, portable characters.

    Shared by the API and the workers so both derive the same name (and document id) from a client name.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    safe = _UNSAFE_FILENAME_CHARS.sub("_", base).strip().lstrip(". ")
    if len(safe) > MAX_FILENAME_CHARS:
        suffix = Path(safe).suffix
        if not suffix or len(suffix) > MAX_SUFFIX_CHARS:
            suffix = ""
        safe = safe[: MAX_FILENAME_CHARS - len(suffix)].rstrip(" ") + suffix
    return safe or "file"
