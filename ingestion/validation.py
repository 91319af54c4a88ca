"""Per-document checks, made when a document is parsed, before it shares a batch with other documents.

A document the tokenizer, the model or Milvus would refuse (an id Milvus cannot filter on, a field longer
than the store holds, a lone surrogate, oversized metadata, an id already used in the same upload) fails
alone here, with a reason a person can act on, instead of failing a whole batch later with another
document's error. The API checks JSON documents with the same functions (422 before anything is stored).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from common.fields import (
    CONTROL_CHARS,
    MAX_DOC_ID_BYTES,
    MAX_TITLE_CHARS,
    SURROGATES,
    printable,
    utf8_len,
)
from common.types import Document
from ingestion.formats.common import Failure, Item

MAX_METADATA_DEPTH = 16
"""Nesting of arrays and objects inside one document's metadata."""
MAX_REASON_CHARS = 1000


def id_problem(doc_id: str) -> str | None:
    """Why `doc_id` cannot identify a stored document, or None."""
    if not doc_id.strip():
        return "the id is blank"
    if SURROGATES.search(doc_id):
        return "the id holds a lone UTF-16 surrogate, which is not Unicode text"
    if CONTROL_CHARS.search(doc_id):
        return "the id holds a control character (U+0000-U+001F or U+007F)"
    if utf8_len(doc_id) > MAX_DOC_ID_BYTES:
        return f"the id is {utf8_len(doc_id)} bytes long; at most {MAX_DOC_ID_BYTES} bytes of UTF-8"
    return None


def title_problem(title: str) -> str | None:
    if SURROGATES.search(title):
        return "the title holds a lone UTF-16 surrogate, which is not Unicode text"
    if len(title) > MAX_TITLE_CHARS:
        return f"the title is {len(title)} characters long; at most {MAX_TITLE_CHARS}"
    return None


def text_problem(text: str) -> str | None:
    if not text.strip():
        return "the text is empty"
    if SURROGATES.search(text):
        return "the text holds a lone UTF-16 surrogate, which is not Unicode text"
    return None


def metadata_problem(metadata: Any, max_bytes: int) -> str | None:
    """Why `metadata` cannot be stored with every chunk of its document, or None."""
    if not isinstance(metadata, dict):
        return "metadata must be a JSON object"
    if _depth(metadata) > MAX_METADATA_DEPTH:
        return f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        return f"metadata is not plain JSON ({exc})"
    if SURROGATES.search(encoded):
        return "metadata holds a lone UTF-16 surrogate, which is not Unicode text"
    if utf8_len(encoded) > max_bytes:
        return f"metadata is {utf8_len(encoded)} bytes of JSON; at most {max_bytes}"
    return None


def _depth(value: Any) -> int:
    """Nesting depth of lists and dicts, without recursion (a hostile value may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_METADATA_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def document_problem(doc: Document, max_metadata_bytes: int) -> str | None:
    """The first reason this document cannot be ingested, or None."""
    return (
        id_problem(doc.id)
        or title_problem(doc.title)
        or text_problem(doc.text)
        or metadata_problem(doc.metadata, max_metadata_bytes)
    )


def checked(items: Iterable[Item], max_metadata_bytes: int) -> Iterator[Item]:
    """Each item, or a Failure for a document that cannot be ingested. Every item gets its own report id:
    an id seen before in the upload (another file, record or member) fails as "<id> (copy N)", so two
    documents never overwrite each other silently and no outcome hides another."""
    seen: dict[str, int] = {}
    for item in items:
        key = item.doc_id if isinstance(item, Failure) else item.id
        copies = seen[key] = seen.get(key, 0) + 1
        report_id = printable(key, MAX_DOC_ID_BYTES) + (f" (copy {copies})" if copies > 1 else "")
        if isinstance(item, Failure):
            yield Failure(report_id, printable(item.reason, MAX_REASON_CHARS))
        elif copies > 1:
            reason = f"duplicate document id {printable(key)!r} in this upload; only the first is kept"
            yield Failure(report_id, reason)
        elif problem := document_problem(item, max_metadata_bytes):
            yield Failure(report_id, f"document {printable(key)!r}: {problem}")
        else:
            yield item
