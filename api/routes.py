"""HTTP views: validate, record the job, enqueue by task name, answer 202. No model work here."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import TypeAdapter

from api.schemas import AskRequest, CollectionName, IngestRequest
from api.services import services
from api.uploads import save_json_documents, save_uploaded_files
from celeryconfig import ASK_TASK, INGEST_TASK
from common.errors import InvalidRequest, NotFound, UnsupportedMediaType

bp = Blueprint("api", __name__, url_prefix="/api/v1")
health_bp = Blueprint("health", __name__)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
COLLECTION: TypeAdapter[str] = TypeAdapter(CollectionName)


def _json_body() -> Any:
    if not request.is_json:
        raise UnsupportedMediaType(f"expected application/json, got {request.mimetype or 'no content type'}")
    return request.get_json()  # malformed JSON -> 400 problem via the HTTPException handler


def _accepted(job_id: str) -> Response:
    status_url = url_for("api.get_job", job_id=job_id)
    response = jsonify({"job_id": job_id, "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


def _submit(kind: str, task: str, kwargs: dict[str, Any], total: int, job_id: str | None = None) -> Response:
    svc = services()
    job_id = job_id or uuid.uuid4().hex
    svc.jobs.create(job_id, kind, total)
    svc.enqueue(task, job_id, kwargs)
    return _accepted(job_id)


@bp.post("/documents")
def post_documents() -> Response:
    settings = services().settings
    job_id = uuid.uuid4().hex
    if request.mimetype == "multipart/form-data":
        collection = COLLECTION.validate_python(request.form.get("collection") or settings.default_collection)
        source, total = save_uploaded_files(job_id, settings)
    else:
        body = IngestRequest.model_validate(_json_body())
        collection = body.collection or settings.default_collection
        source, total = save_json_documents(job_id, body.documents, settings)
    kwargs = {"collection": collection, "source": source, "total": total}
    return _submit("ingest", INGEST_TASK, kwargs, total, job_id)


@bp.post("/ask")
def post_ask() -> Response:
    settings = services().settings
    body = AskRequest.model_validate(_json_body())
    if len(body.question) > settings.max_question_chars:
        raise InvalidRequest(f"question is longer than {settings.max_question_chars} characters")
    top_k = body.top_k or settings.default_top_k
    if top_k > settings.max_top_k:
        raise InvalidRequest(f"top_k must be between 1 and {settings.max_top_k}")
    kwargs = {
        "question": body.question,
        "collection": body.collection or settings.default_collection,
        "top_k": top_k,
        "rerank": settings.reranker_backend != "none" if body.rerank is None else body.rerank,
    }
    return _submit("ask", ASK_TASK, kwargs, total=1)


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


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    wait = _wait_seconds()
    if not JOB_ID.match(job_id):
        raise NotFound(f"no job {job_id!r}")
    jobs = services().jobs
    record = jobs.wait(job_id, wait) if wait > 0 else jobs.get(job_id)
    if record is None:
        raise NotFound(f"no job {job_id!r} (never submitted, or expired)")
    return jsonify(record.to_json())


@health_bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    checks = services().health()
    healthy = all(check["ok"] for check in checks.values())
    return jsonify({"status": "ok" if healthy else "degraded", "checks": checks}), 200 if healthy else 503
