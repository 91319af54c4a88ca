"""HTTP views for submitting work and following jobs: validate, record the job, enqueue, answer 202."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from api.auth import principal
from api.schemas import AskRequest, IngestRequest, UploadForm
from api.services import services, submit
from api.spec import PUBLIC, Health, JobAccepted, responses, spec, validated
from api.uploads import save_json_documents, save_uploaded_files
from common.contracts import (
    ASK,
    ASK_QUEUE,
    INGEST,
    INGEST_QUEUE,
    PARSE_QUEUE,
    WEBHOOK_QUEUE,
    Ask,
    IngestJob,
)
from common.errors import InvalidRequest, ServiceUnavailable, TooManyRequests
from common.filters import check_limits, render_filter
from common.readiness import ReadyWorkers
from common.webhooks import require_allowed_host

bp = Blueprint("api", __name__, url_prefix="/api/v1")
health_bp = Blueprint("health", __name__)
READY_QUEUES = (PARSE_QUEUE, INGEST_QUEUE, ASK_QUEUE, WEBHOOK_QUEUE)  # each needs a ready worker


@bp.post("/documents")
@spec.validate(
    json=IngestRequest, form=UploadForm, resp=responses(400, 403, 413, 415, 422, HTTP_202=JobAccepted)
)
def post_documents() -> Response:
    """Ingest documents: JSON `documents`, or files (multipart, any part name; zips are unpacked)."""
    settings, uploads = services().settings, services().uploads
    if request.mimetype == "multipart/form-data":
        form: UploadForm = validated("form")
        collection, on_duplicate, callback_url = form.collection, form.on_duplicate, form.callback_url
        save = lambda job_id: save_uploaded_files(job_id, settings, form.parse_options(), uploads)  # noqa: E731
    else:
        body: IngestRequest = validated("json")
        collection, on_duplicate, callback_url = body.collection, body.on_duplicate, body.callback_url
        save = lambda job_id: save_json_documents(job_id, body.documents, settings, uploads)  # noqa: E731
    collection = collection or settings.default_collection
    principal().require(collection)
    require_allowed_host(callback_url, settings)

    def payload(job_id: str) -> tuple[IngestJob, int]:
        source, total = save(job_id)  # raises on a refused upload, before anything is registered
        services().collections.add(collection)
        seq = services().fences.next_seq()  # a delete accepted after this one wins (common.fences)
        return IngestJob(
            collection=collection, source=source, total=total, on_duplicate=on_duplicate, seq=seq
        ), total

    return submit("ingest", INGEST, payload, callback_url)


@bp.post("/ask")
@spec.validate(json=AskRequest, resp=responses(400, 403, 415, 422, HTTP_202=JobAccepted))
def post_ask() -> Response:
    """Ask a question: the job's result holds the ranked passages with their score at each stage."""
    settings = services().settings
    body: AskRequest = validated("json")
    if len(body.question) > settings.max_question_chars:
        raise InvalidRequest(f"question is longer than {settings.max_question_chars} characters")
    top_k = body.top_k or settings.default_top_k
    if top_k > settings.max_top_k:
        raise InvalidRequest(f"top_k must be between 1 and {settings.max_top_k}")
    if "collection" in body.filters:
        raise InvalidRequest("choose the collection with the `collection` field, not a filter")
    check_limits(body.filters, settings)
    render_filter(body.filters)  # refuse bad filters here, with a 422, not in the worker
    if body.exact and (body.mode or "hybrid") != "dense":
        raise InvalidRequest('exact search is a dense-only reference: send "mode": "dense" with it')
    collection = body.collection or settings.default_collection
    principal().require(collection)
    require_allowed_host(body.callback_url, settings)
    payload = Ask(
        question=body.question,
        collection=collection,
        top_k=top_k,
        reranker=body.chosen_reranker(settings.reranker_backend),
        filters=body.filters,
        options=body.stage_options(),
    )
    admit_question()  # last: a bad request is told what is wrong with it even when the queue is full
    return submit("ask", ASK, lambda _: (payload, 1), body.callback_url)


def admit_question() -> None:
    """Backpressure: past `max_ask_queue` waiting questions, say when to come back instead of queueing."""
    settings = services().settings
    depth = services().queue_depth(ASK_QUEUE)
    if depth >= settings.max_ask_queue:
        raise TooManyRequests(
            f"{depth} questions are waiting (limit {settings.max_ask_queue}); retry later",
            retry_after_s=settings.retry_after_s,
        )


@health_bp.get("/healthz")
@spec.validate(resp=responses(HTTP_200=Health, HTTP_503=Health), security=PUBLIC)
def healthz() -> tuple[Response, int]:
    """Whether Redis, the broker and Milvus answer (503 when one does not); needs no key."""
    checks = services().health()
    healthy = all(check["ok"] for check in checks.values())
    return jsonify({"status": "ok" if healthy else "degraded", "checks": checks}), 200 if healthy else 503


class Readiness(Health):
    status: str = Field(description="ready, or not ready (503)")
    missing: list[str] = Field(
        description="what is not ready: dependencies, and queues without a ready worker"
    )
    detail: str = Field(description="what is missing, in words (empty when ready)")


@health_bp.get("/readyz")
@spec.validate(resp=responses(HTTP_200=Readiness, HTTP_503=Readiness), security=PUBLIC)
def readyz() -> tuple[Response, int]:
    """Whether the service answers at full speed: Redis, the broker and Milvus answer, and each queue has a
    worker with its models loaded and warm (503 names what is missing); needs no key."""
    checks: dict[str, dict[str, Any]] = services().health()
    down = [name for name, check in checks.items() if not check["ok"]]
    try:
        ready = ReadyWorkers(services().redis).ready(READY_QUEUES)
        idle = [queue for queue in READY_QUEUES if not ready[queue]]
        checks["workers"] = {"ok": not idle, "queues": {queue: len(ready[queue]) for queue in READY_QUEUES}}
    except ServiceUnavailable as exc:  # Redis away: no worker is known to be ready
        idle = list(READY_QUEUES)
        checks["workers"] = {"ok": False, "error": services().redactor.error(exc)}
    missing = down + idle
    words = [f"{', '.join(down)} not answering"] if down else []
    if idle:
        words.append(f"no ready worker for {', '.join(idle)}")
    detail = "; ".join(words)
    body = {
        "status": "not ready" if missing else "ready",
        "checks": checks,
        "missing": missing,
        "detail": detail,
    }
    return jsonify(body), 503 if missing else 200
