"""An ingest job fans out into one task per batch of documents; the last batch to end closes the job.

Plain functions over the Runtime; the Celery tasks in `workers.tasks` only call them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from common import metrics
from common.contracts import INGEST, INGEST_BATCH, IngestBatch, IngestJob
from common.errors import InvalidRequest, ServiceUnavailable
from common.faultpoints import fault_point
from common.job_schema import JobKeys
from common.reports import Outcome
from common.types import Document, OnDuplicate
from ingestion.batches import batch_text, parse_batch, split_into_batches
from ingestion.parsing import item_id
from ingestion.pipeline import Held, count, ingest_documents, load_documents, newest, stored_versions
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def batch_path(job_id: str, index: int) -> str:
    return f"{job_id}/batches/{index:05d}.jsonl"


def lease_key(job_id: str, index: int) -> str:
    """The batch's lease: held by the one delivery running it (`workers.tasks.BatchTask`)."""
    return JobKeys(job_id).lease(index)


def discard_batches(rt: Runtime, job_id: str) -> None:
    """Remove the batch files of a coordinator that gave up (time limit, too many documents)."""
    rt.uploads.remove(f"{job_id}/batches")


def split_job(
    rt: Runtime, job_id: str, source: dict[str, Any], only: list[str] | None, deadline: float | None = None
) -> list[str]:
    """Parse the upload into batch files (relative paths); cancellation is honoured between batches.

    Nothing is enqueued until the whole upload is read, so an upload over `max_documents_per_job` fails
    before any of it is written (it would otherwise cost a report per document in Redis for days).
    A delivery that finds the split done (its predecessor was killed after it) reuses the batch files:
    each was renamed into place whole, before `ledger.start` recorded how many there are. A kill during
    the split parses again from the start (the files are rewritten alike: parsing is deterministic).
    `deadline` (monotonic) backs up the soft time limit, should a parser have swallowed its exception.
    """
    planned, _ = rt.ledger.planned(job_id)
    if planned is not None:
        return [batch_path(job_id, index) for index in range(planned)]
    settings, paths, total = rt.settings, [], 0
    documents = load_documents(source, settings, rt.uploads, only)
    batches = split_into_batches(
        documents, settings.ingest_batch_documents, settings.ingest_small_job_batches
    )
    with metrics.timed("ingest", "parse"):  # documents are parsed as the batches are read
        for index, batch in enumerate(batches):
            rt.jobs.check_cancelled(job_id)
            if deadline is not None and time.monotonic() > deadline:
                raise SoftTimeLimitExceeded("the upload was still being read at the soft time limit")
            total += len(batch)
            if total > settings.max_documents_per_job:
                discard_batches(rt, job_id)
                raise InvalidRequest(
                    f"the upload holds more than {settings.max_documents_per_job} documents "
                    "(MAX_DOCUMENTS_PER_JOB); split it into several uploads"
                )
            paths.append(batch_path(job_id, index))
            rt.uploads.write_text(paths[-1], batch_text(batch))
            fault_point(settings, "split")  # test only: a window inside the split
    rt.ledger.start(job_id, len(paths), total)
    return paths


def batch_kwargs(job_id: str, index: int, request: IngestJob | dict[str, Any]) -> dict[str, Any]:
    """A batch's kwargs from its job's request (checked again when stored): what the coordinator sends, and
    what the reconciler (`workers.lost_batches`) sends again for a batch message lost in a kill."""
    job = request if isinstance(request, IngestJob) else INGEST.parse(request)
    batch = IngestBatch(
        job_id=job_id,
        index=index,
        path=batch_path(job_id, index),
        collection=job.collection,
        on_duplicate=job.on_duplicate,
        seq=job.seq,
    )
    return INGEST_BATCH.kwargs(batch)


def enqueue_batches(rt: Runtime, send: Any, job_id: str, batches: int, request: IngestJob) -> None:
    """One task per batch, once per job: a delivery that finds the fan-out done sends nothing.

    A coordinator killed half-way through sends every batch again; a batch queued twice is harmless (the
    ledger counts each index once, reports and writes are idempotent), and the window is a few sends.
    """
    if rt.ledger.planned(job_id)[1]:
        return
    fault_point(rt.settings, "before_enqueue")  # test only: split done, nothing queued yet
    for index in range(batches):
        send(INGEST_BATCH.name, kwargs=batch_kwargs(job_id, index, request))
    rt.ledger.enqueued(job_id)


def run_batch(  # noqa: PLR0917 - the batch task's own arguments
    rt: Runtime, job_id: str, path: str, collection: str, on_duplicate: OnDuplicate, seq: int = 0
) -> list[Outcome]:
    """Ingest one batch, unless the job was cancelled (then nothing of it runs).

    The batch's path names its lock holder, so a redelivery takes over the locks of a killed delivery.
    """
    if rt.jobs.cancel_requested(job_id):
        return []
    fault_point(rt.settings, "before_batch")
    items = parse_batch(rt.uploads.read_text(path))
    metrics.emit(metrics.batch("documents", len(items)))

    @contextmanager
    def guarded(name: str, ids: Sequence[str]) -> Iterator[Held]:
        """The documents' locks, then a writer entry in the collection, then its latest deletes."""
        fences = rt.fences
        with rt.locks.hold(name, ids, owner=path), fences.writing(name, seq, owner=path):
            yield Held(
                fences.floors(name, ids),
                fences.marked(name, ids),
                mark=lambda doc_ids: fences.mark(name, doc_ids),
                clear=lambda doc_ids: fences.clear(name, doc_ids),
            )

    paused_before, through_before = rt.gate.waited_s, rt.gate.ran_through_s
    outcomes = ingest_documents(
        items,
        collection=collection,
        on_duplicate=on_duplicate,
        embedder=rt.embedder,
        store=rt.store,
        settings=rt.settings,
        seq=seq,
        lock=guarded,
    )
    if rt.gate.waited_s > paused_before:  # how long this batch's embedding paused for questions
        metrics.emit(metrics.stage("ingest", "gave_way", rt.gate.waited_s - paused_before))
    if rt.gate.ran_through_s > through_before:  # and ran on through questions that kept the device
        metrics.emit(metrics.stage("ingest", "ran_through", rt.gate.ran_through_s - through_before))
    rt.reports.record(job_id, outcomes)
    fault_point(rt.settings, "before_ledger")
    return outcomes


def fail_batch(rt: Runtime, job_id: str, path: str, reason: str) -> list[Outcome]:
    """A batch that could not be written after its retries: each of its documents failed, with why."""
    items = parse_batch(rt.uploads.read_text(path))
    outcomes = [Outcome(item_id(item), "failed", reason) for item in items]
    rt.reports.record(job_id, outcomes)
    return outcomes


def abandon_batch(rt: Runtime, path: str, collection: str) -> list[str]:
    """After a batch failed for good (its worker lost, Milvus away past its retries): leave each of its
    documents with its newest whole version, so a write cut short by a kill leaves neither half a version
    nor two. Returns the documents it could not settle (Milvus or Redis away): `SETTLE_TASK` retries them."""
    ids = [item.id for item in parse_batch(rt.uploads.read_text(path)) if isinstance(item, Document)]
    try:
        settle_documents(rt, collection, ids, owner=path)
    except Exception as exc:  # the failure is recorded; a settle task tries again (workers.tasks)
        log.warning("could not settle the documents of failed batch %s yet: %s", path, exc)
        return ids
    return []


def settle_documents(rt: Runtime, collection: str, ids: list[str], owner: str) -> None:
    """Under their locks, prune each document to its newest whole version and clear its mark; raises when
    any could not be looked up or pruned (settling is idempotent: a retry redoes what is left)."""
    with rt.locks.hold(collection, ids, owner=owner):
        found = stored_versions(rt.store, collection, ids)
        for versions in found.values():
            if isinstance(versions, Exception):
                raise versions
        keep = {d: {newest(v)} for d, v in found.items() if not isinstance(v, Exception)}
        rt.store.prune(collection, keep | {d: set() for d in ids if d not in found})
        rt.store.flush()
        rt.fences.clear(collection, ids)


def finish_batch(rt: Runtime, job_id: str, index: int, outcomes: list[Outcome], collection: str) -> None:
    if rt.ledger.finish_batch(job_id, index, count(outcomes)):
        flush_at_end(rt, job_id)
        finalize(rt, job_id, collection)


def flush_at_end(rt: Runtime, job_id: str) -> None:
    """The job's rows into indexed segments before it reads ended, so the questions that follow search
    them fast; batches flush only every `milvus_flush_interval_s`. Only speed rides on it: Milvus away
    must not keep the job from ending (its rows are stored; the next flush seals them)."""
    try:
        with metrics.timed("ingest", "flush"):
            rt.store.flush()
    except ServiceUnavailable as exc:
        log.warning("job %s: its rows are stored but not flushed yet: %s", job_id, exc)


def finalize(rt: Runtime, job_id: str, collection: str) -> None:
    """The job's end state from its totals: failed only when nothing could be ingested."""
    record = rt.jobs.get(job_id, beats_of=[])  # every batch has ended: no beat can mean a lost one
    progress = record.progress if record else {}
    if rt.jobs.cancel_requested(job_id):
        rt.jobs.mark_cancelled(job_id)
    elif progress.get("total", 0) == 0:
        rt.jobs.mark_failed(job_id, "the upload contained no documents")
    elif progress.get("failed") and not (progress.get("succeeded") or progress.get("skipped")):
        rt.jobs.mark_failed(
            job_id,
            f"no document could be ingested: all {progress['failed']} failed (see the job's documents; "
            f"{_first_failure(rt.reports.first(job_id) or {})})",
        )
    else:
        rt.jobs.mark_succeeded(job_id, {"collection": collection, **progress})


def _first_failure(report: dict[str, Any]) -> str:
    """The first failed document's reason, naming the document once (most reasons already start with it)."""
    doc_id, reason = str(report.get("doc_id")), str(report.get("reason"))
    return reason if reason.startswith(doc_id) else f"{doc_id}: {reason}"
