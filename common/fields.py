"""Sizes of what a stored chunk may hold: the Milvus schema is built from them and every document is checked
against them when it is parsed, so no write can be refused for a size the parser let through.

Milvus standalone counts VARCHAR lengths in bytes (milvus-lite in characters): limits are in UTF-8 bytes,
the stricter of the two.
"""

from __future__ import annotations

import re

MAX_DOC_ID_BYTES = 512
"""A document id; the Milvus field holds 1024 (room for ids that predate this limit)."""
DOC_ID_FIELD_BYTES = 1024
MAX_TITLE_CHARS = 2048
TITLE_FIELD_BYTES = 8192
"""A title of MAX_TITLE_CHARS characters fits in any UTF-8 encoding (at most 4 bytes a character)."""
CHUNK_FIELD_BYTES = 65_535
"""A chunk's text, and its title-prefixed content that BM25 indexes."""

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
"""Milvus's filter parser has no escape for these, so an id holding one could never be deleted or deduped."""
SURROGATES = re.compile(r"[\ud800-\udfff]")
"""A lone UTF-16 surrogate (JSON's "\\ud800") is not Unicode text: no encoder, tokenizer or store takes it."""


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def printable(text: str | None, limit: int = 200) -> str:
    """`text` made safe to store and show in a report: surrogates escaped, cut to `limit` characters."""
    if text is None:
        return ""
    safe = SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"
