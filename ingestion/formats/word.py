"""Word (.docx): paragraphs and table cells in reading order; headers and footers are boilerplate.

A .docx is a zip, so its declared sizes are checked first: python-docx reads every part into memory.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import DocumentError
from common.isolation import NEVER_CAUGHT
from common.types import Document
from ingestion.archive import ArchiveLimits, check_declared_sizes
from ingestion.formats.common import read_nonempty, tidy_text

if TYPE_CHECKING:
    from docx.document import Document as WordDocument
    from docx.table import Table, _Cell
    from docx.text.paragraph import Paragraph

DOCX_LIMITS = ArchiveLimits(max_members=10_000, max_total_bytes=256 * 1024**2, max_ratio=200.0)
"""What a .docx may decompress to; a real document's XML is far below this."""


def parse_docx(path: Path, name: str) -> Document:
    """Body text of a Word document; title from its properties, else its first Title/Heading."""
    read_nonempty(path, name)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DocumentError(f"{name}: not a readable Word (.docx) document ({exc})") from exc
    check_declared_sizes(infos, name, DOCX_LIMITS)
    word = _open(path, name)
    paragraphs = [text for text in _texts(word) if text]
    text = tidy_text("\n".join(paragraphs))
    if not text:
        raise DocumentError(f"{name}: the Word document contains no text")
    return Document(id=name, text=text, title=_title(word))


def _open(path: Path, name: str) -> WordDocument:
    """Load the document; anything python-docx cannot load is not a Word document for the operator."""
    import docx  # noqa: PLC0415 - parser loaded on first use: the API imports this module

    try:
        return docx.Document(str(path))
    except NEVER_CAUGHT:
        raise
    except Exception as exc:  # python-docx, zipfile and lxml each raise their own types on damage
        raise DocumentError(f"{name}: not a readable Word (.docx) document ({exc})") from exc


def _texts(container: WordDocument | _Cell) -> Iterator[str]:
    """Paragraph texts and table rows in document order, descending into nested tables."""
    from docx.text.paragraph import Paragraph  # noqa: PLC0415 - parser loaded on first use: the API imports this module

    for block in container.iter_inner_content():
        if isinstance(block, Paragraph):
            yield block.text
        else:
            yield from _table_rows(block)


def _table_rows(table: Table) -> Iterator[str]:
    """One line per row, cells separated by tabs; a merged cell is read once, not once per column."""
    for row in table.rows:
        seen: set[int] = set()
        cells: list[str] = []
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(text for text in _texts(cell) if text))
        yield "\t".join(cells)


def _title(word: WordDocument) -> str:
    """Core-properties title if set, else the first paragraph styled Title or Heading."""
    title = " ".join((word.core_properties.title or "").split())
    if title:
        return title
    for paragraph in word.paragraphs:
        if _is_heading(paragraph) and paragraph.text.strip():
            return " ".join(paragraph.text.split())
    return ""


def _is_heading(paragraph: Paragraph) -> bool:
    style = paragraph.style.name if paragraph.style is not None else ""
    return bool(style) and (style == "Title" or str(style).startswith("Heading"))
