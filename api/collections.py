"""Collections and their documents: reads straight from Milvus, deletes as jobs on the ingest queue."""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify

from api.auth import principal
from api.schemas import COLLECTION_PATTERN
from api.services import services, submit
from api.spec import (
    Collection,
    CollectionDocumentsQuery,
    CollectionList,
    JobAccepted,
    Page,
    responses,
    spec,
    validated,
)
from common.contracts import DELETE, Delete
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
@spec.validate(resp=responses(HTTP_200=CollectionList))
def list_collections() -> Response:
    """The collections this key may use, with their document and chunk counts."""
    svc, caller = services(), principal()
    names = sorted(name for name in svc.collections.names() if caller.may_use(name))
    items = [{"name": name, **svc.catalog.counts(name)} for name in names]
    return jsonify({"items": items})


@bp.get("/<name>")
@spec.validate(resp=responses(404, HTTP_200=Collection))
def get_collection(name: str) -> Response:
    """A collection's counts, embedding model and index parameters."""
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
    model = services().catalog.model()
    return jsonify({"name": name, **counts, **model, "index": index})


@bp.get("/<name>/documents")
@spec.validate(query=CollectionDocumentsQuery, resp=responses(404, 422, HTTP_200=Page))
def list_documents(name: str) -> Response:
    """The collection's documents, paged."""
    query: CollectionDocumentsQuery = validated("query")
    offset, limit = query.offset, query.limit
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
@spec.validate(resp=responses(404))
def get_document(name: str, doc_id: str) -> Response:
    """A document with its chunks."""
    _collection_or_404(name)
    document = services().catalog.document(name, doc_id)
    if document is None:
        raise NotFound(f"no document {doc_id!r} in collection {name!r}")
    return jsonify(document)


@bp.delete("/<name>/documents/<path:doc_id>")
@spec.validate(resp=responses(404, HTTP_202=JobAccepted))
def delete_document(name: str, doc_id: str) -> Response:
    """Delete a document (a job on the ingest queue; search stops seeing it when the job ends)."""
    _collection_or_404(name)
    if services().catalog.document(name, doc_id) is None:
        raise NotFound(f"no document {doc_id!r} in collection {name!r}")
    return submit("delete", DELETE, lambda _: (_delete(name, [doc_id]), 1))


@bp.delete("/<name>")
@spec.validate(resp=responses(404, HTTP_202=JobAccepted))
def delete_collection(name: str) -> Response:
    """Delete a collection and everything in it (a job); uploads accepted after this request survive it."""
    _collection_or_404(name)
    response = submit("delete", DELETE, lambda _: (_delete(name, None), 1))
    services().collections.remove(name)  # only once the delete is queued: a failed request changes nothing
    return response


def _delete(collection: str, doc_ids: list[str] | None) -> Delete:
    """A delete job: numbered, so it removes what jobs accepted before it wrote (common.fences)."""
    return Delete(collection=collection, doc_ids=doc_ids, seq=services().fences.next_seq())
