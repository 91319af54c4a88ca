"""Thin Celery tasks: take small JSON, call plain functions, return small JSON.

`JobTask` keeps Quarry's job record in step with the task: running when it starts, succeeded with the
result, failed with a reason a person can read. Tasks raise on failure; only retriable errors retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.signals import task_postrun

from common import tracing
from common.contracts import ASK, DELETE, INGEST, INGEST_BATCH, SETTLE, IngestBatch, Settle
from common.errors import InvalidRequest
from common.faultpoints import fault_point
from common.job_record import JobCancelled, JobRecord
from common.retries import RETRIABLE_ERRORS
from common.settings import get_settings
from ingestion.pipeline import count
from workers.app import app
from workers.deletes import delete_documents
from workers.fanout import (
    abandon_batch,
    discard_batches,
    enqueue_batches,
    fail_batch,
    finalize,
    finish_batch,
    lease_key,
    run_batch,
    settle_documents,
    split_job,
)
from workers.reliability import LostChildRequest, check_delivery, delivery_token
from workers.retrieval import Question
from workers.retry_policy import RetryPolicy, failure_reason
from workers.runtime import runtime

log = logging.getLogger(__name__)
_settings = get_settings()


class RetriableTask(RetryPolicy):
    """The retry policy, and what every job's task does for liveness: count its deliveries, beat while it
    runs (workers.reliability)."""

    Request = LostChildRequest

    def job_of(self, task_id: str, kwargs: dict[str, Any]) -> str:
        """The job whose record tracks this task (job id = task id, except for batches)."""
        return task_id

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        fault_point(runtime().settings, "task_start")  # test only: a task about to reach Redis
        try:
            self.start(task_id, kwargs)
        except RETRIABLE_ERRORS as exc:
            raise self.retry_outage(exc) from exc

    def start(self, task_id: str, kwargs: dict[str, Any]) -> None:
        """Whether and how this delivery runs (`Ignore` skips the body); an outage here is retried."""

    def start_running(self, task_id: str, kwargs: dict[str, Any]) -> None:
        """Count this delivery (raises WorkerLost past the limit), then beat until the task ends."""
        rt, job_id = runtime(), self.job_of(task_id, kwargs)
        check_delivery(rt.liveness, job_id, task_id, self.request.retries, rt.settings.max_deliveries)
        rt.heartbeat.begin(job_id, task_id)
        self.hold(partial(rt.heartbeat.end, job_id, task_id))

    def hold(self, release: Callable[[], None]) -> None:
        """Something this delivery holds until it ends (its beat, a batch's lease): `release_held` lets go."""
        self.request.quarry_held = [*(getattr(self.request, "quarry_held", None) or []), release]

    def release_held(self) -> None:
        """Let go of what this delivery holds, however it ended: at `task_postrun`, which Celery sends after
        every end. Its hooks do not all run: no `after_return` after a retry or a reject (a retry it could
        not publish, Redis away), nor after a hook or result write that raised. A beat or lease outliving
        its delivery lived for good: this process beat it and refreshed it, and the batch's next delivery
        found it held by "another delivery" and skipped it; the job never ended."""
        fault_point(runtime().settings, "released")  # test only: a delivery about to let go
        held, self.request.quarry_held = getattr(self.request, "quarry_held", None) or [], []
        for release in reversed(held):
            try:
                release()
            except Exception as exc:  # Redis away: what this process no longer refreshes expires by its TTL
                log.warning("task %s: could not let go of what it held: %s", self.request.id, exc)

    def unless_ended(self, job_id: str, task_id: str) -> JobRecord | None:
        """The job's record; Ignore when the job already ended, so a redelivered or late message never
        reopens it. A lost worker's end, until now only derived at read time, is stored first (and its
        webhook sent), but only when the lost delivery is this task's own (same attempt): a sibling's beat
        may be stale merely because Redis was away, and its worker beats again in a moment."""
        rt = runtime()
        own = rt.liveness.delivered_before(job_id, task_id, self.request.retries)
        record = rt.jobs.get(job_id, beats_of=[task_id] if own else [])
        if record is not None and record.state.terminal:
            rt.jobs.settle(record)
            raise Ignore()
        return record

    def on_child_lost(self, task_id: str, kwargs: dict[str, Any], pid: int) -> None:
        """In the worker's main process, once the child `pid` running this task died (before the requeue)."""

    def on_requeued(self, task_id: str, kwargs: dict[str, Any], reason: str) -> None:
        """In the worker's main process, once Celery put the message of a task whose child died back."""
        runtime().liveness.requeued(self.job_of(task_id, kwargs), task_id, reason)


class JobTask(RetriableTask):
    """Base task that keeps the job record in step (job id = task id): running as it starts (`start`),
    succeeded by the body's last step (`succeed`), failed or cancelled when it raises (`on_failure`)."""

    def start(self, task_id: str, kwargs: dict[str, Any]) -> None:
        self.unless_ended(task_id, task_id)
        jobs = runtime().jobs
        jobs.check_cancelled(task_id)  # raising here skips the body: work not started does not run
        if not jobs.mark_running(task_id):
            raise Ignore()  # cancelled between the checks above and now: a start never reopens an end
        self.start_running(task_id, kwargs)

    def succeed(self, result: dict[str, Any]) -> dict[str, Any]:
        """Store the job's result as the last step of its body, where an outage is retried as anywhere in
        the body. In `on_success` Celery retries nothing and only logs an error: an outage there that
        outlasted the patient Redis client lost the answer, and a broker that took the acknowledgement
        (RabbitMQ) left the job `running` for good."""
        fault_point(runtime().settings, "task_end")  # test only: a result about to be stored
        runtime().jobs.mark_succeeded(self.request.id, result)
        return result

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        runtime().jobs.note_retry(task_id, failure_reason(exc))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, JobCancelled):
            runtime().jobs.mark_cancelled(task_id)
            return
        log.warning("job %s failed: %s", task_id, failure_reason(exc))
        runtime().jobs.mark_failed(task_id, failure_reason(exc))


@app.task(name=INGEST.name, base=JobTask, bind=True)
def ingest(self: JobTask, **kwargs: Any) -> dict[str, Any]:
    """Coordinator: parse the upload into batch files and fan out one task per batch (they end the job).

    At its soft time limit the job fails with that reason and its batch files go (never swallowed: a
    swallowed limit would run on into the hard kill, and a killed coordinator is delivered again).
    """
    rt, job_id, job = runtime(), self.request.id, INGEST.parse(kwargs)
    deadline = time.monotonic() + rt.settings.task_soft_time_limit_s
    try:
        paths = split_job(rt, job_id, job.source, job.only, deadline)
        if not paths:
            finalize(rt, job_id, job.collection)
        enqueue_batches(rt, app.send_task, job_id, len(paths), job)
    except SoftTimeLimitExceeded:
        discard_batches(rt, job_id)
        raise
    return {"batches": len(paths)}


class BatchTask(RetriableTask):
    """One batch of an ingest job. After its retries, each of its documents fails with the reason.

    A batch runs in one delivery at a time, from `before_start` to its end (`after_return`, `on_retry`, or its
    child process dying): a second copy of its message waits for the batch's lease, then finds the batch
    counted (and only makes sure the job ended) or its holder dead (and runs it). Without the lease both
    copies would share the batch's document locks (they lock under the batch's name) and one could fail the
    batch while the other still writes it.
    """

    @staticmethod
    def batch(kwargs: dict[str, Any]) -> IngestBatch | None:
        """The batch a message names, checked like the task body checks it; None for a malformed payload,
        which the body then fails by name: its hooks have no batch to lease, count or fail."""
        try:
            return INGEST_BATCH.parse(kwargs)
        except InvalidRequest:
            return None

    def job_of(self, task_id: str, kwargs: dict[str, Any]) -> str:
        batch = self.batch(kwargs)
        return task_id if batch is None else batch.job_id

    @staticmethod
    def lease(task_id: str, batch: IngestBatch, pid: int | None = None) -> tuple[str, str]:
        return lease_key(batch.job_id, batch.index), delivery_token(task_id, pid)

    def start(self, task_id: str, kwargs: dict[str, Any]) -> None:
        batch = self.batch(kwargs)
        if batch is None:
            return  # the body fails it by name
        rt, (key, token) = runtime(), self.lease(task_id, batch)
        if not rt.locks.take(key, token, rt.locks.wait_s):
            log.warning("batch %s of job %s: run by another delivery", batch.index, batch.job_id)
            raise Ignore()  # that one ends the batch (should it die, workers.lost_batches sends it again)
        try:
            if self.unless_ended(batch.job_id, task_id) is None:
                raise Ignore()  # the job's record expired: a late batch has nothing to add to
            if self.counted(batch):
                raise Ignore()  # an earlier delivery ended the batch: no work, and not a delivery of it
        except Ignore:
            rt.locks.give_back(key, token)
            raise
        self.hold(partial(rt.locks.give_back, key, token))
        self.start_running(task_id, kwargs)

    @staticmethod
    def counted(batch: IngestBatch) -> bool:
        """Whether a delivery already ended this batch; if so, the job ends now should every batch have
        ended (that delivery may have died between counting the batch and ending the job)."""
        rt = runtime()
        if not rt.ledger.counted(batch.job_id, batch.index):
            return False
        finish_batch(rt, batch.job_id, batch.index, [], batch.collection)
        return True

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        batch = self.batch(kwargs)
        if batch is not None:
            runtime().jobs.note_retry(batch.job_id, f"batch {batch.index}: {failure_reason(exc)}")

    def on_child_lost(self, task_id: str, kwargs: dict[str, Any], pid: int) -> None:
        batch = self.batch(kwargs)
        if batch is not None:
            runtime().locks.give_back(*self.lease(task_id, batch, pid))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        batch, reason = self.batch(kwargs), failure_reason(exc)
        if batch is None:  # no job, batch file or collection to fail it in: the reason names the fault
            log.warning("batch message %s refused: %s", task_id, reason)
            return
        log.warning("batch %s of job %s failed: %s", batch.index, batch.job_id, reason)
        if self.counted(batch):
            return  # a delivery ended it already: its outcomes stand
        rt = runtime()
        outcomes = fail_batch(rt, batch.job_id, batch.path, reason)
        unsettled = abandon_batch(rt, batch.path, batch.collection)
        if unsettled:
            send_settle(batch.collection, unsettled, batch.path)
        finish_batch(rt, batch.job_id, batch.index, outcomes, batch.collection)


@app.task(name=INGEST_BATCH.name, base=BatchTask, bind=True)
def ingest_batch(self: BatchTask, **kwargs: Any) -> dict[str, int]:
    rt, batch = runtime(), INGEST_BATCH.parse(kwargs)
    outcomes = run_batch(rt, batch.job_id, batch.path, batch.collection, batch.on_duplicate, batch.seq)
    finish_batch(rt, batch.job_id, batch.index, outcomes, batch.collection)
    return count(outcomes)


@task_postrun.connect(weak=False)  # type: ignore[misc]
def _release_held(task: Any = None, **_: Any) -> None:
    if isinstance(task, RetriableTask):
        task.release_held()


def send_settle(collection: str, doc_ids: list[str], owner: str) -> None:
    """Hand documents a failed batch could not settle to `settle`, which retries until Milvus is back."""
    try:
        payload = Settle(collection=collection, doc_ids=doc_ids, owner=owner)
        app.send_task(SETTLE.name, kwargs=SETTLE.kwargs(payload))
    except Exception as exc:  # the broker away too: the next write of these documents settles them
        log.warning("could not queue the settling of %d documents of %s: %s", len(doc_ids), owner, exc)


@app.task(name=SETTLE.name, base=RetryPolicy, bind=True, max_retries=_settings.settle_max_retries)
def settle(self: RetryPolicy, **kwargs: Any) -> dict[str, int]:
    """Leave each document of a batch that failed for good on its newest whole version (not a job: it
    has no record; a failure past its retries is logged, and the documents' marks stay for the next write)."""
    job = SETTLE.parse(kwargs)
    settle_documents(runtime(), job.collection, job.doc_ids, owner=f"settle:{job.owner}")
    return {"settled": len(job.doc_ids)}


@app.task(name=ASK.name, base=JobTask, bind=True)
def ask(self: JobTask, **kwargs: Any) -> dict[str, Any]:
    """Queue the question into this process's micro-batcher and wait for its own answer."""
    rt, job = runtime(), ASK.parse(kwargs)
    fault_point(rt.settings, "ask")  # test only: a window to kill the worker in while it answers
    options = job.options.model_dump(exclude_none=True)
    item = Question(
        job.question, job.collection, job.top_k, job.reranker, job.filters, options, tracing.current()
    )
    result = rt.questions.call(item, timeout_s=rt.settings.task_soft_time_limit_s)
    rt.jobs.set_progress(self.request.id, {"done": 1, "total": 1})
    return self.succeed(result)


@app.task(name=DELETE.name, base=JobTask, bind=True)
def delete(self: JobTask, **kwargs: Any) -> dict[str, Any]:
    """Delete documents (or, without ids, the whole collection) and flush, so search never sees them."""
    rt, job = runtime(), DELETE.parse(kwargs)
    deleted = delete_documents(rt, job.collection, job.doc_ids, job.seq)
    rt.jobs.set_progress(self.request.id, {"done": 1, "total": 1})
    return self.succeed({"collection": job.collection, "doc_ids": job.doc_ids, "deleted_chunks": deleted})
