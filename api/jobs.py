"""Following jobs: status (with long-poll), per-document reports, retry of failures, cancellation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.auth import principal
from api.events import StreamLimits, snapshot, stream
from api.services import services, submit
from api.spec import (
    Job,
    JobAccepted,
    JobDocumentsQuery,
    JobList,
    JobListQuery,
    Page,
    WaitQuery,
    responses,
    spec,
    validated,
)
from common.contracts import INGEST
from common.errors import Conflict, NotFound
from common.job_list import Cursor, JobFilter, JobLister, listed
from common.job_record import JobRecord, JobState
from common.retention import source_paths, upload_dirs

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def _job_or_404(job_id: str) -> JobRecord:
    record = services().jobs.get(job_id) if JOB_ID.match(job_id) else None
    if record is None or not principal().owns(record.owner):  # another tenant's job looks missing
        raise NotFound(f"no job {job_id!r} (never submitted, or expired)")
    return record


@bp.get("")
@spec.validate(query=JobListQuery, resp=responses(422, HTTP_200=JobList))
def list_jobs() -> Response:
    """The caller's jobs, newest first (the open API: every job), filtered by state, kind, collection and
    creation time; pages of `limit`, each ending with a cursor to the next. Another key's jobs never show."""
    query: JobListQuery = validated("query")
    after = query.created_after
    if after is not None and after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    flt = JobFilter(query.state, query.kind, query.collection, after.timestamp() * 1000 if after else None)
    cursor = Cursor.decode(query.cursor) if query.cursor else None
    svc = services()
    page = JobLister(svc.jobs, svc.settings.job_list_scan).page(principal().name, flt, query.limit, cursor)
    following = page.next_cursor.encode() if page.next_cursor else None
    return jsonify({"items": [listed(record) for record in page.items], "next_cursor": following})


@bp.get("/<job_id>")
@spec.validate(query=WaitQuery, resp=responses(404, 422, HTTP_200=Job))
def get_job(job_id: str) -> Response:
    """A job's state, progress and result; `?wait=S` holds the answer until the job ends (at most
    `max_wait_s`), so a client follows a job with few requests."""
    query: WaitQuery = validated("query")
    wait = min(query.wait, services().settings.max_wait_s)
    record = _job_or_404(job_id)
    if wait > 0 and not record.state.terminal:
        record = services().jobs.wait(job_id, wait) or record
    return jsonify(record.to_json())


@bp.get("/<job_id>/events")
@spec.validate(
    resp=responses(
        404, HTTP_200=(None, "text/event-stream: the job's events"), HTTP_204=(None, "seen its end")
    )
)
def job_events(job_id: str) -> tuple[Iterator[str] | str, int, dict[str, str]]:
    """The job's changes as Server-Sent Events: `state`, `progress`, then `end` with the result, and the
    stream closes. Send `Last-Event-ID` to resume; a connection lasts at most `max_wait_s`, then
    reconnect (EventSource does so by itself).

    The body goes back as a generator, not a Response: spectree reads a Response's whole body (to
    validate it), which would run the stream to its end before sending a byte."""
    record = _job_or_404(job_id)  # a missing or foreign job is a 404 problem, before the stream starts
    last_id = request.headers.get("Last-Event-ID") or None
    if record.state.terminal and snapshot(record, last_id).event_id == last_id:
        return "", 204, {}  # the client saw the end: 204 stops EventSource reconnecting
    svc = services()
    cfg = svc.settings
    limits = StreamLimits(cfg.max_wait_s, cfg.sse_heartbeat_s, cfg.sse_poll_s, cfg.sse_retry_ms)
    headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: pass each event at once
    }
    return stream(svc.jobs, job_id, last_id, limits), 200, headers


@bp.get("/<job_id>/documents")
@spec.validate(query=JobDocumentsQuery, resp=responses(404, 422, HTTP_200=Page))
def get_job_documents(job_id: str) -> Response:
    """What happened to each document of an ingest job, paged; `?status=failed` for the failures."""
    _job_or_404(job_id)
    query: JobDocumentsQuery = validated("query")
    return jsonify(services().reports.page(job_id, query.status, query.offset, query.limit))


@bp.post("/<job_id>/retry")
@spec.validate(resp=responses(404, 409, HTTP_202=JobAccepted))
def retry_job(job_id: str) -> Response:
    """A new ingest job over the same upload that re-runs only the documents that failed."""
    record = _job_or_404(job_id)
    if record.kind != "ingest":
        raise Conflict(f"job {job_id} is an {record.kind} job; only ingest jobs can be retried")
    if not record.state.terminal:
        raise Conflict(f"job {job_id} is still {record.state}; retry it once it has ended")
    svc = services()
    failed = svc.reports.ids(job_id, "failed")
    original = svc.jobs.request(job_id)
    if not failed or original is None:
        raise Conflict(f"job {job_id} has no failed documents to retry")
    again = INGEST.parse(original).model_copy(
        update={"only": failed, "total": len(failed), "seq": svc.fences.next_seq()}
    )
    callback_url = (record.callback or {}).get("url")  # the retry reports where the original did
    with _upload_kept(job_id, original):
        return submit("ingest", INGEST, lambda _: (again, len(failed)), callback_url)


@contextmanager
def _upload_kept(job_id: str, request: dict[str, Any]) -> Iterator[None]:
    """Keep the upload a retry reads until the retry ends (its end schedules it again); 409 once it was
    deleted after UPLOAD_RETENTION_S."""
    svc, dirs = services(), upload_dirs(job_id, request)
    svc.retention.pin(dirs)
    try:
        if not all(svc.uploads.exists(path) for path in source_paths(request)):
            raise Conflict(
                f"the upload of job {job_id} was deleted {svc.settings.upload_retention_s} s after the job "
                "ended (UPLOAD_RETENTION_S); upload the files again"
            )
        for name in dirs:
            svc.uploads.touch(name)  # fresh: never mistaken for an orphan while the retry runs
        yield
    except BaseException:
        svc.retention.schedule(dirs)  # nothing will read them: back on the schedule
        raise


@bp.delete("/<job_id>")
@spec.validate(resp=responses(404, 409, HTTP_200=Job, HTTP_202=Job))
def cancel_job(job_id: str) -> tuple[Response, int]:
    """Cancel: a queued job ends now; a running one stops at its next checkpoint, keeping what it wrote."""
    record = _job_or_404(job_id)
    if record.state.terminal:
        raise Conflict(f"job {job_id} has already ended ({record.state})")
    services().jobs.cancel(job_id)
    record = _job_or_404(job_id)
    return jsonify(record.to_json()), 200 if record.state is JobState.CANCELLED else 202
