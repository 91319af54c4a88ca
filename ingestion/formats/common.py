"""Types and helpers every format shares: per-document failures, parse options, text and file names.

Kept apart from `ingestion.parsing` so format modules and `ingestion.archive` can use them without
importing the registry that imports them (no import cycle).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import DocumentError
from common.types import Document

UTF8_BOM = b"\xef\xbb\xbf"
MAX_FILENAME_CHARS = 200
MAX_SUFFIX_CHARS = 16
"""A longer "suffix" (e.g. "a.<300 chars>") is not a real extension and is not preserved on truncation."""

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._ -]")


@dataclass(frozen=True)
class Failure:
    """One document that could not be parsed; the others of the same file or archive still go through.

    `reason` is written for the operator and says where (file, line, row or member) and why.
    """

    doc_id: str
    reason: str


@dataclass(frozen=True)
class ParseOptions:
    """How to read record formats (CSV columns); ignored by single-document formats."""

    text_column: str = "text"
    id_column: str = "id"
    title_column: str | None = None


Item = Document | Failure
"""What a multi-document parser yields for each record: the document, or why it failed."""


def item_id(item: Item) -> str:
    """The document id an item stands for, parsed or failed."""
    return item.doc_id if isinstance(item, Failure) else item.id


DEFAULT_PARSE_OPTIONS = ParseOptions()


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


def read_nonempty(path: Path, name: str) -> bytes:
    """The stored upload's bytes; an empty file is refused here so every format says it the same way."""
    data = path.read_bytes()
    if not data:
        raise DocumentError(f"{name}: file is empty")
    return data


def sanitize_filename(name: str) -> str:
    """A safe base name for storing an upload: no directories, no hidden files, portable characters.

    Shared by the API, the workers and zip extraction so all derive the same name from a client name.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    safe = _UNSAFE_FILENAME_CHARS.sub("_", base).strip().lstrip(". ")
    if len(safe) > MAX_FILENAME_CHARS:
        suffix = Path(safe).suffix
        if not suffix or len(suffix) > MAX_SUFFIX_CHARS:
            suffix = ""
        safe = safe[: MAX_FILENAME_CHARS - len(suffix)].rstrip(" ") + suffix
    return safe or "file"


def tidy_text(text: str) -> str:
    """Extracted text made indexable: spaces collapsed within lines, at most one blank line in a row.

    Markup and page layout leave runs of whitespace that only waste tokens when chunking.
    """
    lines = [" ".join(line.split()) for line in text.replace("\x00", "").splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
