"""HTTP views for submitting work and following jobs: validate, record the job, enqueue, answer 202."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.auth import principal
from api.schemas import AskRequest, IngestRequest, UploadForm
from api.services import services, submit
from api.uploads import save_json_documents, save_uploaded_files
from celeryconfig import ASK_TASK, INGEST_TASK, QUERY_QUEUE
from common.errors import InvalidRequest, TooManyRequests, UnsupportedMediaType
from common.filters import render_filter

bp = Blueprint("api", __name__, url_prefix="/api/v1")
health_bp = Blueprint("health", __name__)
MAX_PAGE = 1000


def json_body() -> Any:
    if not request.is_json:
        raise UnsupportedMediaType(f"expected application/json, got {request.mimetype or 'no content type'}")
    return request.get_json()  # malformed JSON -> 400 problem via the HTTPException handler


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return value


@bp.post("/documents")
def post_documents() -> Response:
    settings = services().settings
    if request.mimetype == "multipart/form-data":
        form = UploadForm.model_validate(request.form.to_dict())
        collection, on_duplicate = form.collection, form.on_duplicate
        save = lambda job_id: save_uploaded_files(job_id, settings, form.parse_options())  # noqa: E731
    else:
        body = IngestRequest.model_validate(json_body())
        collection, on_duplicate = body.collection, body.on_duplicate
        save = lambda job_id: save_json_documents(job_id, body.documents, settings)  # noqa: E731
    collection = collection or settings.default_collection
    principal().require(collection)

    def kwargs(job_id: str) -> tuple[dict[str, Any], int]:
        source, total = save(job_id)  # raises on a refused upload, before anything is registered
        services().collections.add(collection)
        return {
            "collection": collection,
            "source": source,
            "total": total,
            "on_duplicate": on_duplicate,
        }, total

    return submit("ingest", INGEST_TASK, kwargs)


@bp.post("/ask")
def post_ask() -> Response:
    settings = services().settings
    body = AskRequest.model_validate(json_body())
    if len(body.question) > settings.max_question_chars:
        raise InvalidRequest(f"question is longer than {settings.max_question_chars} characters")
    top_k = body.top_k or settings.default_top_k
    if top_k > settings.max_top_k:
        raise InvalidRequest(f"top_k must be between 1 and {settings.max_top_k}")
    if "collection" in body.filters:
        raise InvalidRequest("choose the collection with the `collection` field, not a filter")
    render_filter(body.filters)  # refuse bad filters here, with a 422, not in the worker
    if body.exact and (body.mode or "hybrid") != "dense":
        raise InvalidRequest('exact search is a dense-only reference: send "mode": "dense" with it')
    collection = body.collection or settings.default_collection
    principal().require(collection)
    task_kwargs = {
        "question": body.question,
        "collection": collection,
        "top_k": top_k,
        "reranker": body.chosen_reranker(settings.reranker_backend),
        "filters": body.filters,
        "options": body.stage_options(),
    }
    admit_question()  # last: a bad request is told what is wrong with it even when the queue is full
    return submit("ask", ASK_TASK, lambda _: (task_kwargs, 1))


def admit_question() -> None:
    """Backpressure: past `max_query_queue` waiting questions, say when to come back instead of queueing."""
    settings = services().settings
    depth = services().queue_depth(QUERY_QUEUE)
    if depth >= settings.max_query_queue:
        raise TooManyRequests(
            f"{depth} questions are waiting (limit {settings.max_query_queue}); retry later",
            retry_after_s=settings.retry_after_s,
        )


@health_bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    checks = services().health()
    healthy = all(check["ok"] for check in checks.values())
    return jsonify({"status": "ok" if healthy else "degraded", "checks": checks}), 200 if healthy else 503
