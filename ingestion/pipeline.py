"""Ingest documents: dedup by content hash, chunk, embed, write, and report every document's outcome.

A document that cannot be parsed or chunked fails alone; the job fails only when nothing was ingested.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from common.errors import DocumentError
from common.reports import Outcome
from common.settings import Settings
from common.types import Chunk, Document, Embedder, VectorStore
from ingestion.chunking import chunk_document, embedding_text
from ingestion.parsing import Failure, ParseOptions, iter_file_documents, read_documents_jsonl

OnDuplicate = Literal["skip", "replace", "error"]
Item = Document | Failure


@dataclass
class Tally:
    total: int
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    chunks: int = 0

    def add(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            setattr(self, outcome.status, getattr(self, outcome.status) + 1)
            self.chunks += outcome.chunks
        self.total = max(self.total, self.done)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.skipped

    def progress(self) -> dict[str, int]:
        return {
            "done": self.done,
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "chunks": self.chunks,
        }


Report = Callable[[list[Outcome], Tally], None]
Lock = Callable[[str, Sequence[str]], AbstractContextManager[None]]


def _no_lock(collection: str, doc_ids: Sequence[str]) -> AbstractContextManager[None]:
    return nullcontext()


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
    yield from (item for item in items if (item.id if isinstance(item, Document) else item.doc_id) in wanted)


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


def _chunk(
    docs: list[tuple[Document, str]], embedder: Embedder, settings: Settings, outcomes: list[Outcome]
) -> list[Chunk]:
    chunks: list[Chunk] = []
    for doc, _ in docs:
        try:
            chunks.extend(
                chunk_document(
                    doc,
                    embedder,
                    chunk_tokens=settings.chunk_tokens,
                    overlap_tokens=settings.chunk_overlap_tokens,
                    max_tokens=embedder.max_tokens,
                    include_title=settings.chunk_include_title,
                )
            )
        except DocumentError as exc:
            outcomes.append(Outcome(doc.id, "failed", exc.detail))
    return chunks


def write_batch(
    plan: Plan, *, collection: str, embedder: Embedder, store: VectorStore, settings: Settings
) -> list[Outcome]:
    """Embed and upsert; a replaced document's old chunks are deleted first, so none is orphaned."""
    outcomes = list(plan.outcomes)
    chunks = _chunk(plan.write, embedder, settings, outcomes)
    failed = {o.doc_id for o in outcomes if o.status == "failed"}
    if plan.replaced:
        store.delete(collection, plan.replaced)
    if chunks:
        vectors = embedder.embed_documents([embedding_text(c, settings.chunk_include_title) for c in chunks])
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


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def ingest_documents(
    items: Iterable[Item],
    *,
    collection: str,
    total: int,
    on_duplicate: OnDuplicate,
    embedder: Embedder,
    store: VectorStore,
    settings: Settings,
    report: Report,
    lock: Lock = _no_lock,
) -> dict[str, Any]:
    """`lock` holds a batch's documents against concurrent jobs from the hash check to the write."""
    tally = Tally(total=total)
    for batch in _batches(items, settings.ingest_batch_documents):
        ids = [item.id for item in batch if isinstance(item, Document)]
        with lock(collection, ids):
            plan = plan_batch(batch, store.document_hashes(collection, ids), on_duplicate)
            outcomes = write_batch(
                plan, collection=collection, embedder=embedder, store=store, settings=settings
            )
        tally.add(outcomes)
        report(outcomes, tally)
    store.flush()
    if tally.failed and not (tally.succeeded or tally.skipped):
        raise DocumentError(
            f"no document could be ingested: all {tally.failed} failed "
            "(see the job's documents for each reason)"
        )
    return {"collection": collection, **tally.progress()}
