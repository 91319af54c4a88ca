"""HTTP views for submitting work and following jobs: validate, record the job, enqueue, answer 202."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.schemas import AskRequest, IngestRequest, UploadForm
from api.services import services, submit
from api.uploads import save_json_documents, save_uploaded_files
from celeryconfig import ASK_TASK, INGEST_TASK
from common.errors import InvalidRequest, NotFound, UnsupportedMediaType
from common.filters import render_filter
from common.reports import STATUSES

bp = Blueprint("api", __name__, url_prefix="/api/v1")
health_bp = Blueprint("health", __name__)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
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

    def kwargs(job_id: str) -> tuple[dict[str, Any], int]:
        source, total = save(job_id)
        return {
            "collection": collection,
            "source": source,
            "total": total,
            "on_duplicate": on_duplicate,
        }, total

    services().collections.add(collection)
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
    task_kwargs = {
        "question": body.question,
        "collection": body.collection or settings.default_collection,
        "top_k": top_k,
        "rerank": settings.reranker_backend != "none" if body.rerank is None else body.rerank,
        "filters": body.filters,
    }
    return submit("ask", ASK_TASK, lambda _: (task_kwargs, 1))


def _wait_seconds() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise InvalidRequest("wait must be a number of seconds") from None
    if not 0 <= wait < float("inf"):
        raise InvalidRequest("wait must be a non-negative number of seconds")
    return min(wait, services().settings.max_wait_s)


def _known_job(job_id: str) -> None:
    if not JOB_ID.match(job_id) or services().jobs.get(job_id) is None:
        raise NotFound(f"no job {job_id!r} (never submitted, or expired)")


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    wait = _wait_seconds()
    _known_job(job_id)
    jobs = services().jobs
    record = jobs.wait(job_id, wait) if wait > 0 else jobs.get(job_id)
    if record is None:
        raise NotFound(f"no job {job_id!r} (never submitted, or expired)")
    return jsonify(record.to_json())


@bp.get("/jobs/<job_id>/documents")
def get_job_documents(job_id: str) -> Response:
    """What happened to each document of an ingest job, paged; `?status=failed` for the failures."""
    _known_job(job_id)
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
    offset = int_arg("offset", 0, 0, 10**9)
    limit = int_arg("limit", 100, 1, MAX_PAGE)
    return jsonify(services().reports.page(job_id, status, offset, limit))


@health_bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    checks = services().health()
    healthy = all(check["ok"] for check in checks.values())
    return jsonify({"status": "ok" if healthy else "degraded", "checks": checks}), 200 if healthy else 503
