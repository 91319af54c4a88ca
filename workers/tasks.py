"""Thin Celery tasks: take small JSON, call plain functions, return small JSON.

`JobTask` keeps Quarry's job record in step with the task: running when it starts, succeeded with the
result, failed with a reason a person can read. Tasks raise on failure; only retriable errors retry.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from celeryconfig import ASK_TASK, INGEST_TASK
from common.errors import RETRIABLE_ERRORS, QuarryError
from ingestion.pipeline import ingest_documents, load_documents
from workers.app import app
from workers.retrieval import answer
from workers.runtime import runtime

log = logging.getLogger(__name__)


def failure_reason(exc: BaseException) -> str:
    """What a client reads in the job's `error`."""
    if isinstance(exc, QuarryError):
        return exc.detail
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the job ran past its time limit and was stopped"
    return f"{type(exc).__name__}: {exc}"


class JobTask(Task):  # type: ignore[misc]
    """Base task that mirrors Celery's lifecycle into the job record (job id = task id)."""

    autoretry_for = RETRIABLE_ERRORS
    max_retries = 5
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        runtime().jobs.mark_running(task_id)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        runtime().jobs.mark_succeeded(task_id, retval)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        runtime().jobs.note_retry(task_id, failure_reason(exc))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log.warning("job %s failed: %s", task_id, failure_reason(exc))
        runtime().jobs.mark_failed(task_id, failure_reason(exc))


@app.task(name=INGEST_TASK, base=JobTask, bind=True)
def ingest(self: JobTask, *, collection: str, source: dict[str, Any], total: int) -> dict[str, Any]:
    rt = runtime()
    job_id = self.request.id
    return ingest_documents(
        load_documents(source, rt.settings.uploads),
        collection=collection,
        total=total,
        embedder=rt.embedder,
        store=rt.store,
        settings=rt.settings,
        progress=lambda done, of: rt.jobs.set_progress(job_id, done, of),
    )


@app.task(name=ASK_TASK, base=JobTask, bind=True)
def ask(self: JobTask, *, question: str, collection: str, top_k: int, rerank: bool) -> dict[str, Any]:
    rt = runtime()
    result = answer(
        question,
        collection=collection,
        top_k=top_k,
        rerank=rerank,
        embedder=rt.embedder,
        store=rt.store,
        reranker=rt.reranker,
        settings=rt.settings,
    )
    rt.jobs.set_progress(self.request.id, 1, 1)
    return result
