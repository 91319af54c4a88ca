"""The OpenAPI 3.1 document at /openapi.json, built from the same pydantic models that validate requests.

Paths are listed here by hand (a route table, not a framework), bodies come from `api.schemas`, so the
document cannot drift from what the views accept. Schemathesis fuzzes the live service against it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from api.schemas import COLLECTION_PATTERN, AskRequest, IngestRequest, UploadForm
from common.reports import STATUSES

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
PROBLEM = {"$ref": "#/components/schemas/Problem"}


class JobAccepted(BaseModel):
    job_id: str
    status_url: str


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


def _schemas() -> dict[str, Any]:
    """Component schemas of every model, with their nested definitions hoisted next to them."""
    out: dict[str, Any] = {}
    for model in (AskRequest, IngestRequest, UploadForm, JobAccepted, Problem):
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    upload = out["UploadForm"]
    upload["properties"]["files"] = {"type": "array", "items": {"type": "string", "format": "binary"}}
    upload["required"] = ["files"]
    return out


def _param(name: str, where: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


def _op(
    summary: str, ok: int, body: str | None = None, params: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One operation: its success status, the problem+json errors, an optional JSON body model."""
    ok_content = (
        {"application/json": {"schema": {"$ref": REF.format(model="JobAccepted")}}}
        if ok == 202
        else {"application/json": {"schema": {"type": "object"}}}
    )
    responses: dict[str, Any] = {str(ok): {"description": "OK", "content": ok_content}}
    for status in ("400", "401", "403", "404", "409", "413", "415", "422", "429", "503"):
        responses[status] = {
            "description": "problem",
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }
    op: dict[str, Any] = {"summary": summary, "parameters": params or [], "responses": responses}
    if body is not None:
        content = {"application/json": {"schema": {"$ref": REF.format(model=body)}}}
        if body == "IngestRequest":
            content["multipart/form-data"] = {"schema": {"$ref": REF.format(model="UploadForm")}}
        op["requestBody"] = {"required": True, "content": content}
    return op


def _paths() -> dict[str, Any]:
    job = [_param("job_id", "path", JOB_ID)]
    name = [_param("name", "path", {"type": "string", "pattern": COLLECTION_PATTERN})]
    doc = [*name, _param("doc_id", "path", {"type": "string", "minLength": 1, "maxLength": 512})]
    page = [
        _param("offset", "query", {"type": "integer", "minimum": 0}),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ]
    wait = _param("wait", "query", {"type": "number", "minimum": 0})
    status = _param("status", "query", {"type": "string", "enum": list(STATUSES)})
    return {
        "/api/v1/documents": {
            "post": _op("Ingest documents (JSON) or files (multipart)", 202, "IngestRequest")
        },
        "/api/v1/ask": {"post": _op("Ask a question", 202, "AskRequest")},
        "/api/v1/jobs/{job_id}": {
            "get": _op("A job's state, progress and result; ?wait long-polls", 200, params=[*job, wait]),
            "delete": _op("Cancel a job", 200, params=job),
        },
        "/api/v1/jobs/{job_id}/documents": {
            "get": _op("Each document's outcome", 200, params=[*job, status, *page])
        },
        "/api/v1/jobs/{job_id}/retry": {"post": _op("Re-run the failed documents", 202, params=job)},
        "/api/v1/collections": {"get": _op("Collections this key may use", 200)},
        "/api/v1/collections/{name}": {
            "get": _op("A collection's counts and index", 200, params=name),
            "delete": _op("Delete a collection", 202, params=name),
        },
        "/api/v1/collections/{name}/documents": {"get": _op("Documents, paged", 200, params=[*name, *page])},
        "/api/v1/collections/{name}/documents/{doc_id}": {
            "get": _op("A document with its chunks", 200, params=doc),
            "delete": _op("Delete a document", 202, params=doc),
        },
        "/healthz": {
            "get": {
                "summary": "Dependencies' health",
                "security": [],
                "responses": {
                    "200": {"description": "healthy"},
                    "503": {"description": "a dependency is down"},
                },
            }
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Quarry", "version": "1", "description": "Asynchronous semantic search"},
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document())
