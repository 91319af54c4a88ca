"""PDF: the text layer, page by page. Scans without OCR have none and are refused, not indexed empty."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import DocumentError
from common.isolation import NEVER_CAUGHT
from common.types import Document
from ingestion.formats.common import read_nonempty, tidy_text

if TYPE_CHECKING:
    from pypdf import PdfReader


def parse_pdf(path: Path, name: str) -> Document:
    """Text of every page (pages separated by a blank line); the title from the PDF's metadata."""
    read_nonempty(path, name)
    try:
        reader = _open(path, name)
        pages = [tidy_text(page.extract_text() or "") for page in reader.pages]
        title = _title(reader)
    except DocumentError:
        raise
    except NEVER_CAUGHT:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files; each means "unreadable"
        raise DocumentError(f"{name}: not a readable PDF ({_describe(exc)})") from exc
    text = "\n\n".join(page for page in pages if page)
    if not text:
        raise DocumentError(f"{name}: no text layer (scanned PDF?); run OCR on it first")
    return Document(id=name, text=text, title=title)


def _open(path: Path, name: str) -> PdfReader:
    """Open the PDF; an encrypted one is read only if it opens with the empty password."""
    from pypdf import PdfReader  # noqa: PLC0415 - parser loaded on first use: the API imports this module

    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):
        raise DocumentError(f"{name}: PDF is password-protected; upload an unprotected copy")
    return reader


def _title(reader: PdfReader) -> str:
    """The document-information title; tools often leave it empty or set it to a file name."""
    title = reader.metadata.title if reader.metadata is not None else None
    return " ".join(str(title).split()) if title else ""


def _describe(exc: Exception) -> str:
    """The library's message, or at least the error type when it has none."""
    return str(exc) or type(exc).__name__
