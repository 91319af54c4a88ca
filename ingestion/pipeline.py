"""Ingest documents: check each, dedup by content hash, chunk, embed, write, and report every outcome.

A document that cannot be parsed, checked, chunked, embedded or written fails alone
(`ingestion.validation`, `ingestion.writing`); the job fails only when nothing was ingested.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from common import metrics
from common.errors import DocumentError
from common.fields import printable
from common.isolation import describe, isolate
from common.reports import STATUSES, Outcome
from common.settings import Settings
from common.types import Document, Embedder, OnDuplicate, VectorStore
from ingestion.archive_limits import ArchiveLimits, ExpansionBudget
from ingestion.parsing import Failure, Item, ParseOptions, item_id, iter_file_documents, read_documents_jsonl
from ingestion.validation import checked
from ingestion.writing import Pending, write_documents

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


def load_documents(
    source: dict[str, Any], settings: Settings, only: list[str] | None = None
) -> Iterator[Item]:
    """Documents of an upload as the API stored them, each checked (`ingestion.validation`): a document the
    store would refuse, or a repeated id, is a Failure here. `only`: just these ids, for a retry."""
    items = checked(_read_source(source, settings), settings.max_metadata_bytes)
    if only is None:
        yield from items
        return
    wanted = set(only)
    yield from (item for item in items if item_id(item) in wanted)


def _read_source(source: dict[str, Any], settings: Settings) -> Iterator[Item]:
    """Paths in `source` are relative to the shared upload dir. The zips of one upload share one budget
    of expanded bytes, as the API checked it from their declared sizes."""
    uploads = settings.uploads
    if source.get("kind") == "jsonl":
        yield from read_documents_jsonl(uploads / source["path"])
        return
    options = ParseOptions(**source.get("options", {}))
    limits, budget = ArchiveLimits.from_settings(settings), ExpansionBudget.from_settings(settings)
    for item in source.get("files", []):
        try:
            yield from iter_file_documents(
                uploads / item["path"],
                name=item["name"],
                options=options,
                archive_limits=limits,
                budget=budget,
            )
        except DocumentError as exc:  # the whole file is refused (unreadable, zip bomb, traversal)
            yield Failure(doc_id=item["name"], reason=exc.detail)


@dataclass
class Plan:
    """What one batch will do: outcomes decided before embedding, and documents to write."""

    outcomes: list[Outcome] = field(default_factory=list)
    write: list[Pending] = field(default_factory=list)


def plan_batch(items: list[Item], stored: dict[str, str | Exception], on_duplicate: OnDuplicate) -> Plan:
    """Skip what is stored already, refuse what `on_duplicate` forbids; `stored` maps an id to its stored
    content hash (absent: new) or to the error that kept it from being looked up."""
    plan = Plan()
    for item in items:
        if isinstance(item, Failure):
            plan.outcomes.append(Outcome(item.doc_id, "failed", item.reason))
            continue
        digest, existing = content_hash(item), stored.get(item.id)
        if isinstance(existing, Exception):
            reason = f"{printable(item.id)}: could not be looked up ({describe(existing)})"
            plan.outcomes.append(Outcome(item.id, "failed", reason))
        elif existing is not None and on_duplicate == "error":
            plan.outcomes.append(Outcome(item.id, "failed", "a document with this id already exists"))
        elif existing == digest:
            plan.outcomes.append(Outcome(item.id, "skipped", "same content already stored"))
        else:
            plan.write.append(Pending(item, digest, replaces=existing is not None))
    return plan


def stored_hashes(store: VectorStore, collection: str, ids: list[str]) -> dict[str, str | Exception]:
    """Each id's stored content hash; one Milvus query for the batch, narrowed down if it fails."""

    def run(part: Sequence[str]) -> list[str | None]:
        found = store.document_hashes(collection, part)
        return [found.get(doc_id) for doc_id in part]

    results = isolate(ids, run, what="hash lookup")
    return {doc_id: found for doc_id, found in zip(ids, results, strict=True) if found is not None}


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
        plan = plan_batch(items, stored_hashes(store, collection, ids), on_duplicate)
        written = write_documents(
            plan.write, collection=collection, embedder=embedder, store=store, settings=settings
        )
    with metrics.timed("ingest", "flush"):
        store.flush()
    position = {item_id(item): i for i, item in enumerate(items)}  # report in the upload's order
    return sorted(plan.outcomes + written, key=lambda outcome: position.get(outcome.doc_id, len(items)))
