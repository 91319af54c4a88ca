"""Collections and their documents: reads straight from Milvus, deletes as jobs on the ingest queue."""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify

from api.auth import principal
from api.routes import MAX_PAGE, int_arg
from api.schemas import COLLECTION_PATTERN
from api.services import services, submit
from celeryconfig import DELETE_TASK
from common.errors import NotFound

bp = Blueprint("collections", __name__, url_prefix="/api/v1/collections")


def _collection_or_404(name: str) -> dict[str, int]:
    if not re.match(COLLECTION_PATTERN, name):
        raise NotFound(f"no collection {name!r}")
    principal().require_visible(name)
    counts = services().catalog.counts(name)
    if counts["chunks"] == 0 and name not in services().collections.names():
        raise NotFound(f"no collection {name!r}")
    return counts


@bp.get("")
def list_collections() -> Response:
    svc, caller = services(), principal()
    names = sorted(name for name in svc.collections.names() if caller.may_use(name))
    items = [{"name": name, **svc.catalog.counts(name)} for name in names]
    return jsonify({"items": items})


@bp.get("/<name>")
def get_collection(name: str) -> Response:
    counts = _collection_or_404(name)
    settings = services().settings
    index = {
        "type": "HNSW",
        "M": settings.hnsw_m,
        "efConstruction": settings.hnsw_ef_construction,
        "ef": settings.search_ef,
        "metric": "COSINE",
        "full_text": "BM25",
    }
    model = services().catalog.store.model_properties()
    return jsonify({"name": name, **counts, **model, "index": index})


@bp.get("/<name>/documents")
def list_documents(name: str) -> Response:
    offset = int_arg("offset", 0, 0, 16_383)
    limit = int_arg("limit", 100, 1, MAX_PAGE)
    counts = _collection_or_404(name)
    items = services().catalog.documents(name, offset, limit)
    end = offset + len(items)
    return jsonify(
        {
            "items": items,
            "total": counts["documents"],
            "offset": offset,
            "next_offset": end if end < counts["documents"] and items else None,
        }
    )


@bp.get("/<name>/documents/<path:doc_id>")
def get_document(name: str, doc_id: str) -> Response:
    _collection_or_404(name)
    document = services().catalog.document(name, doc_id)
    if document is None:
        raise NotFound(f"no document {doc_id!r} in collection {name!r}")
    return jsonify(document)


@bp.delete("/<name>/documents/<path:doc_id>")
def delete_document(name: str, doc_id: str) -> Response:
    _collection_or_404(name)
    if services().catalog.document(name, doc_id) is None:
        raise NotFound(f"no document {doc_id!r} in collection {name!r}")
    return submit("delete", DELETE_TASK, lambda _: ({"collection": name, "doc_ids": [doc_id]}, 1))


@bp.delete("/<name>")
def delete_collection(name: str) -> Response:
    _collection_or_404(name)
    services().collections.remove(name)
    return submit("delete", DELETE_TASK, lambda _: ({"collection": name, "doc_ids": None}, 1))
