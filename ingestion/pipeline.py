"""Ingest documents: check each, dedup by content hash, chunk, embed, write, and report every outcome.

A document that cannot be parsed, checked, chunked, embedded or written fails alone
(`ingestion.validation`, `ingestion.writing`); the job fails only when nothing was ingested.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from common import metrics
from common.errors import DocumentError
from common.faultpoints import fault_point
from common.fields import printable
from common.isolation import describe, isolate
from common.reports import STATUSES, Outcome
from common.settings import Settings
from common.types import Document, Embedder, OnDuplicate, UploadStore, VectorStore
from ingestion.archive_limits import ArchiveLimits, ExpansionBudget
from ingestion.parsing import Failure, Item, ParseOptions, item_id, iter_file_documents, read_documents_jsonl
from ingestion.validation import checked
from ingestion.writing import Pending, write_documents

Versions = dict[str, int]  # a document's stored versions: {content hash: seq of the job that wrote it}
DELETED = "deleted by a request accepted after this upload; not written"
SUPERSEDED = "a version from an upload accepted after this one is stored; not written"


def _nothing(doc_ids: Sequence[str]) -> None:
    return None


@dataclass
class Held:
    """What a batch knows and records while it holds its documents (`workers.fanout` builds it over Redis;
    `common.fences`): each document's latest delete, the documents a write cut short may have left stray
    rows of, and how to mark documents as being written and clear them once settled."""

    floors: dict[str, int] = field(default_factory=dict)
    marked: set[str] = field(default_factory=set)
    mark: Callable[[Sequence[str]], None] = _nothing
    clear: Callable[[Sequence[str]], None] = _nothing


Lock = Callable[[str, Sequence[str]], AbstractContextManager[Held]]


@contextmanager
def _no_lock(collection: str, doc_ids: Sequence[str]) -> Iterator[Held]:
    yield Held()


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
    source: dict[str, Any], settings: Settings, uploads: UploadStore, only: list[str] | None = None
) -> Iterator[Item]:
    """Documents of an upload as the API stored them, each checked (`ingestion.validation`): a document the
    store would refuse, or a repeated id, is a Failure here. `only`: just these ids, for a retry."""
    items = checked(_read_source(source, settings, uploads), settings.max_metadata_bytes)
    if only is None:
        yield from items
        return
    wanted = set(only)
    yield from (item for item in items if item_id(item) in wanted)


def _read_source(source: dict[str, Any], settings: Settings, uploads: UploadStore) -> Iterator[Item]:
    """Paths in `source` are keys of the upload store (`store.uploads`), each read from a local copy while
    it is parsed. The zips of one upload share one budget of expanded bytes, as the API checked it from
    their declared sizes."""
    if source.get("kind") == "jsonl":
        with uploads.local(source["path"]) as path:
            yield from read_documents_jsonl(path)
        return
    options = ParseOptions(**source.get("options", {}))
    limits, budget = ArchiveLimits.from_settings(settings), ExpansionBudget.from_settings(settings)
    for item in source.get("files", []):
        with uploads.local(item["path"]) as path:  # the store unreachable raises: the task retries
            try:
                yield from iter_file_documents(
                    path, name=item["name"], options=options, archive_limits=limits, budget=budget
                )
            except DocumentError as exc:  # the whole file is refused (unreadable, zip bomb, traversal)
                yield Failure(doc_id=item["name"], reason=exc.detail)


@dataclass
class Plan:
    """What one batch will do: outcomes decided before embedding, documents to write, and the versions each
    document of the batch had when it was looked up (what `settle` keeps when a write fails)."""

    outcomes: list[Outcome] = field(default_factory=list)
    write: list[Pending] = field(default_factory=list)
    stored: dict[str, Versions] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # each looked-up document's new content hash


def plan_batch(
    items: list[Item],
    stored: dict[str, Versions | Exception],
    on_duplicate: OnDuplicate,
    floors: dict[str, int] | None = None,
    seq: int = 0,
) -> Plan:
    """Skip what is stored already, refuse what `on_duplicate` forbids or a later delete removed; `stored`
    maps an id to its stored versions (absent: new) or to the error that kept it from being looked up, and
    `floors` an id to its latest delete's number (`common.fences`)."""
    plan, floors = Plan(), floors or {}
    for item in items:
        if isinstance(item, Failure):
            plan.outcomes.append(Outcome(item.doc_id, "failed", item.reason))
            continue
        digest, floor, existing = content_hash(item), floors.get(item.id, 0), stored.get(item.id, {})
        if floor > seq:
            plan.outcomes.append(Outcome(item.id, "failed", DELETED))
            continue
        if isinstance(existing, Exception):
            reason = f"{printable(item.id)}: could not be looked up ({describe(existing)})"
            plan.outcomes.append(Outcome(item.id, "failed", reason))
            continue
        plan.stored[item.id], plan.digests[item.id] = existing, digest
        if existing and max(existing.values()) > seq:  # the latest-accepted upload wins, as deletes do
            plan.digests[item.id] = newest(existing)
            plan.outcomes.append(Outcome(item.id, "skipped", SUPERSEDED))
        elif existing and on_duplicate == "error":
            plan.outcomes.append(Outcome(item.id, "failed", "a document with this id already exists"))
        elif existing.get(digest, -1) >= floor:  # stored, and no pending delete will remove it
            plan.outcomes.append(Outcome(item.id, "skipped", "same content already stored"))
        else:
            plan.write.append(Pending(item, digest))
    return plan


def stored_versions(store: VectorStore, collection: str, ids: list[str]) -> dict[str, Versions | Exception]:
    """Each id's stored versions; one Milvus query for the batch, narrowed down if it fails."""

    def run(part: Sequence[str]) -> list[Versions]:
        found = store.document_versions(collection, part)
        return [found.get(doc_id, {}) for doc_id in part]

    results = isolate(ids, run, what="version lookup")
    return {doc_id: found for doc_id, found in zip(ids, results, strict=True) if found}


def settle(
    plan: Plan, outcomes: list[Outcome], store: VectorStore, collection: str, marked: set[str]
) -> list[str]:
    """Leave each looked-up document with one whole version: the one this batch wrote or found (succeeded,
    skipped), else the newest it had (failed), else none. Replaced versions go only now that their successors
    are stored; so do rows of a write cut short (`marked`, or this batch's failed writes). A document written
    for the first time has nothing to prune. Returns the documents settled."""
    attempted = {item.doc.id for item in plan.write}
    keep: dict[str, set[str]] = {}
    for outcome in outcomes:
        versions = plan.stored.get(outcome.doc_id)
        if versions is None:
            continue  # never looked up (refused, unparsed): not this batch's to touch
        kept = {plan.digests[outcome.doc_id]} if outcome.status != "failed" else set()
        if outcome.status == "failed" and versions:
            kept = {newest(versions)}
        stray = outcome.doc_id in marked or (outcome.status == "failed" and outcome.doc_id in attempted)
        if stray or set(versions) - kept:
            keep[outcome.doc_id] = kept
    store.prune(collection, keep)
    return sorted(attempted | set(keep))


def newest(versions: Versions) -> str:
    """The version written by the latest-accepted job."""
    return max(versions, key=lambda digest: versions[digest])


def ingest_documents(
    items: list[Item],
    *,
    collection: str,
    on_duplicate: OnDuplicate,
    embedder: Embedder,
    store: VectorStore,
    settings: Settings,
    seq: int = 0,
    lock: Lock = _no_lock,
) -> list[Outcome]:
    """One batch; a flush when one is due (`VectorStore.flush_due`). `lock` holds its documents from check to
    prune (`Held`)."""
    ids = [item.id for item in items if isinstance(item, Document)]
    with lock(collection, ids) as held:
        live = [doc_id for doc_id in ids if held.floors.get(doc_id, 0) <= seq]
        plan = plan_batch(items, stored_versions(store, collection, live), on_duplicate, held.floors, seq)
        held.mark([item.doc.id for item in plan.write])
        written = write_documents(
            plan.write, collection=collection, embedder=embedder, store=store, settings=settings, seq=seq
        )
        fault_point(settings, "before_prune")
        held.clear(settle(plan, plan.outcomes + written, store, collection, held.marked))
    with metrics.timed("ingest", "flush"):
        store.flush_due()  # the job's last batch flushes in any case (workers.fanout.finish_batch)
    position = {item_id(item): i for i, item in enumerate(items)}  # report in the upload's order
    return sorted(plan.outcomes + written, key=lambda outcome: position.get(outcome.doc_id, len(items)))
