"""Ingest documents: dedup by content hash, chunk, embed, write, and report every document's outcome.

A document that cannot be parsed or chunked fails alone; the job fails only when nothing was ingested.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import metrics
from common.errors import DocumentError
from common.reports import STATUSES, Outcome
from common.settings import Settings
from common.types import Chunk, Document, Embedder, OnDuplicate, VectorStore
from ingestion.chunking import chunk_document, embedding_text
from ingestion.parsing import Failure, Item, ParseOptions, item_id, iter_file_documents, read_documents_jsonl

Lock = Callable[[str, Sequence[str]], AbstractContextManager[None]]


def _no_lock(collection: str, doc_ids: Sequence[str]) -> AbstractContextManager[None]:
    return nullcontext()


def count(outcomes: list[Outcome]) -> dict[str, int]:
    """Per-status totals and chunks written, as the job's progress adds them up."""
    counts = {status: 0 for status in STATUSES} | {"chunks": 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
        counts["chunks"] += outcome.chunks
    return counts


def content_hash(doc: Document) -> str:
    """What makes two uploads the same document: title, text and metadata."""
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def load_documents(source: dict[str, Any], uploads: Path, only: list[str] | None = None) -> Iterator[Item]:
    """Documents of an upload as the API stored them (`only`: just these ids, for a retry)."""
    items = _read_source(source, uploads)
    if only is None:
        yield from items
        return
    wanted = set(only)
    yield from (item for item in items if item_id(item) in wanted)


def _read_source(source: dict[str, Any], uploads: Path) -> Iterator[Item]:
    """Paths in `source` are relative to the shared upload dir."""
    if source.get("kind") == "jsonl":
        yield from read_documents_jsonl(uploads / source["path"])
        return
    options = ParseOptions(**source.get("options", {}))
    for item in source.get("files", []):
        try:
            yield from iter_file_documents(uploads / item["path"], name=item["name"], options=options)
        except DocumentError as exc:  # the whole file is refused (unreadable, zip bomb, traversal)
            yield Failure(doc_id=item["name"], reason=exc.detail)


@dataclass
class Plan:
    """What one batch will do: outcomes decided before embedding, and documents to write."""

    outcomes: list[Outcome] = field(default_factory=list)
    write: list[tuple[Document, str]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)


def plan_batch(items: list[Item], stored: dict[str, str], on_duplicate: OnDuplicate) -> Plan:
    plan = Plan()
    for item in items:
        if isinstance(item, Failure):
            plan.outcomes.append(Outcome(item.doc_id, "failed", item.reason))
            continue
        digest, existing = content_hash(item), stored.get(item.id)
        if existing is not None and on_duplicate == "error":
            plan.outcomes.append(Outcome(item.id, "failed", "a document with this id already exists"))
        elif existing == digest:
            plan.outcomes.append(Outcome(item.id, "skipped", "same content already stored"))
        else:
            plan.write.append((item, digest))
            if existing is not None:
                plan.replaced.append(item.id)
    return plan


def chunks_of(doc: Document, embedder: Embedder, settings: Settings) -> list[Chunk]:
    """The service's chunking of one document (the benchmark chunks the same way)."""
    return chunk_document(
        doc,
        embedder,
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        max_tokens=embedder.max_tokens,
        include_title=settings.chunk_include_title,
    )


def _chunk(
    docs: list[tuple[Document, str]], embedder: Embedder, settings: Settings, outcomes: list[Outcome]
) -> list[Chunk]:
    chunks: list[Chunk] = []
    for doc, _ in docs:
        try:
            chunks.extend(chunks_of(doc, embedder, settings))
        except DocumentError as exc:
            outcomes.append(Outcome(doc.id, "failed", exc.detail))
    return chunks


def _embed(chunks: list[Chunk], embedder: Embedder, settings: Settings) -> Any:
    """One embedding call over the batch's chunks, timed and counted for the metrics."""
    metrics.emit(metrics.batch("chunks", len(chunks)))
    with metrics.timed("ingest", "embed"):
        return embedder.embed_documents([embedding_text(c, settings.chunk_include_title) for c in chunks])


def write_batch(
    plan: Plan, *, collection: str, embedder: Embedder, store: VectorStore, settings: Settings
) -> list[Outcome]:
    """Embed, then upsert; a replaced document's old chunks are deleted first, so none is orphaned."""
    outcomes = list(plan.outcomes)
    with metrics.timed("ingest", "chunk"):
        chunks = _chunk(plan.write, embedder, settings, outcomes)
    failed = {o.doc_id for o in outcomes if o.status == "failed"}
    vectors = _embed(chunks, embedder, settings) if chunks else None
    if settings.test_batch_delay_s:  # test only: a window in which fault tests kill the worker
        time.sleep(settings.test_batch_delay_s)
    with metrics.timed("ingest", "write"):
        if plan.replaced:
            store.delete(collection, plan.replaced)
        if vectors is not None:
            store.insert(collection, chunks, vectors, {doc.id: digest for doc, digest in plan.write})
    per_doc: dict[str, int] = {}
    for chunk in chunks:
        per_doc[chunk.doc_id] = per_doc.get(chunk.doc_id, 0) + 1
    outcomes += [
        Outcome(doc.id, "succeeded", None, per_doc.get(doc.id, 0))
        for doc, _ in plan.write
        if doc.id not in failed
    ]
    return outcomes


def ingest_batch(
    items: list[Item],
    *,
    collection: str,
    on_duplicate: OnDuplicate,
    embedder: Embedder,
    store: VectorStore,
    settings: Settings,
    lock: Lock = _no_lock,
) -> list[Outcome]:
    """One batch, one flush. `lock` holds its documents against concurrent jobs from check to write."""
    ids = [item.id for item in items if isinstance(item, Document)]
    with lock(collection, ids):
        plan = plan_batch(items, store.document_hashes(collection, ids), on_duplicate)
        outcomes = write_batch(plan, collection=collection, embedder=embedder, store=store, settings=settings)
    with metrics.timed("ingest", "flush"):
        store.flush()
    return outcomes
