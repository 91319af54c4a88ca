"""An ingest job fans out into one task per batch of documents; the last batch to end closes the job.

Plain functions over the Runtime; the Celery tasks in `workers.tasks` only call them.
"""

from __future__ import annotations

import shutil
from typing import Any

from celeryconfig import INGEST_BATCH_TASK
from common import metrics
from common.errors import InvalidRequest
from common.reports import Outcome
from common.types import OnDuplicate
from ingestion.batches import read_batch_file, split_into_batches, write_batch_file
from ingestion.parsing import item_id
from ingestion.pipeline import count, ingest_batch, load_documents
from workers.runtime import Runtime


def split_job(rt: Runtime, job_id: str, source: dict[str, Any], only: list[str] | None) -> list[str]:
    """Parse the upload into batch files (relative paths); cancellation is honoured between batches.

    Nothing is enqueued until the whole upload is read, so an upload over `max_documents_per_job` fails
    before any of it is written (it would otherwise cost a report per document in Redis for days).
    """
    settings, paths, total = rt.settings, [], 0
    batches = split_into_batches(load_documents(source, settings, only), settings.ingest_batch_documents)
    with metrics.timed("ingest", "parse"):  # documents are parsed as the batches are read
        for index, batch in enumerate(batches):
            rt.jobs.check_cancelled(job_id)
            total += len(batch)
            if total > settings.max_documents_per_job:
                shutil.rmtree(settings.uploads / job_id / "batches", ignore_errors=True)
                raise InvalidRequest(
                    f"the upload holds more than {settings.max_documents_per_job} documents "
                    "(MAX_DOCUMENTS_PER_JOB); split it into several uploads"
                )
            path = f"{job_id}/batches/{index:05d}.jsonl"
            write_batch_file(settings.uploads / path, batch)
            paths.append(path)
    rt.ledger.start(job_id, len(paths), total)
    return paths


def enqueue_batches(send: Any, job_id: str, paths: list[str], kwargs: dict[str, Any]) -> None:
    for index, path in enumerate(paths):
        send(INGEST_BATCH_TASK, kwargs={"job_id": job_id, "index": index, "path": path, **kwargs})


def run_batch(
    rt: Runtime, job_id: str, path: str, collection: str, on_duplicate: OnDuplicate
) -> list[Outcome]:
    """Ingest one batch, unless the job was cancelled (then nothing of it runs).

    The batch's path names its lock holder, so a redelivery takes over the locks of a killed delivery.
    """
    if rt.jobs.cancel_requested(job_id):
        return []
    items = read_batch_file(rt.settings.uploads / path)
    metrics.emit(metrics.batch("documents", len(items)))
    outcomes = ingest_batch(
        items,
        collection=collection,
        on_duplicate=on_duplicate,
        embedder=rt.embedder,
        store=rt.store,
        settings=rt.settings,
        lock=lambda name, ids: rt.locks.hold(name, ids, owner=path),
    )
    rt.reports.record(job_id, outcomes)
    return outcomes


def fail_batch(rt: Runtime, job_id: str, path: str, reason: str) -> list[Outcome]:
    """A batch that could not be written after its retries: each of its documents failed, with why."""
    items = read_batch_file(rt.settings.uploads / path)
    outcomes = [Outcome(item_id(item), "failed", reason) for item in items]
    rt.reports.record(job_id, outcomes)
    return outcomes


def finish_batch(rt: Runtime, job_id: str, index: int, outcomes: list[Outcome], collection: str) -> None:
    if rt.ledger.finish_batch(job_id, index, count(outcomes)):
        finalize(rt, job_id, collection)


def finalize(rt: Runtime, job_id: str, collection: str) -> None:
    """The job's end state from its totals: failed only when nothing could be ingested."""
    record = rt.jobs.get(job_id)
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
