"""Plain text and Markdown: the body is kept as written, only the title is derived."""

from __future__ import annotations

import re
from pathlib import Path

from common.errors import DocumentError
from common.types import Document
from ingestion.formats.common import decode_text, read_nonempty

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def read_text(path: Path, name: str) -> str:
    """Read and decode a text upload, rejecting files with nothing to index."""
    text = decode_text(read_nonempty(path, name), name)
    if not text.strip():
        raise DocumentError(f"{name}: file contains only whitespace")
    return text


def parse_text(path: Path, name: str) -> Document:
    """Plain text: the whole file is the body; there is no reliable title, so none is guessed."""
    return Document(id=name, text=read_text(path, name))


def parse_markdown(path: Path, name: str) -> Document:
    """Markdown: the body is kept as written; the first ATX heading becomes the title."""
    text = read_text(path, name)
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
