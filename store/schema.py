"""The Milvus collection's schema and indexes, created once and checked by every worker that uses it.

The collection records what it was built with (model, dimension, schema version) in its properties, not
its description (milvus-lite does not keep descriptions), so a worker with another model, or a Quarry
whose rows mean something else, refuses it instead of mixing vectors or versions.
"""

from __future__ import annotations

from typing import Any, cast

from pymilvus import DataType, Function, FunctionType, MilvusClient

from common.errors import Conflict
from common.fields import CHUNK_FIELD_BYTES, DOC_ID_FIELD_BYTES, TITLE_FIELD_BYTES
from common.settings import Settings
from common.types import BM25Analysis
from store.analysis import ANALYSES

MODEL_PROPERTY = "quarry.embedding_model"
DIMENSION_PROPERTY = "quarry.dimension"
SCHEMA_PROPERTY = "quarry.schema"
SCHEMA_VERSION = "3"  # 3: a chunk's pk names its document's version; rows carry their job's `seq`
ANALYSIS_PROPERTY = "quarry.bm25_analysis"  # store.analysis; absent (built before it existed): standard


def properties(model_name: str, dimension: int) -> dict[str, str]:
    return {MODEL_PROPERTY: model_name, DIMENSION_PROPERTY: str(dimension), SCHEMA_PROPERTY: SCHEMA_VERSION}


def create(client: MilvusClient, name: str, expected: dict[str, str], settings: Settings) -> None:
    """The collection with its schema, HNSW and BM25 indexes, and `expected` as its properties."""
    dimension = int(expected[DIMENSION_PROPERTY])
    client.create_collection(
        name,
        schema=_schema(client, dimension),
        index_params=_index_params(client, settings),
        properties={**expected, ANALYSIS_PROPERTY: settings.bm25_analysis},
    )


def analysis(client: MilvusClient, name: str) -> BM25Analysis:
    """The BM25 analysis the collection was built with: documents and questions must both use it."""
    built = (client.describe_collection(name).get("properties") or {}).get(ANALYSIS_PROPERTY, "standard")
    if built not in ANALYSES:
        raise Conflict(f"Milvus collection {name!r} records an unknown BM25 analysis {built!r}")
    return cast(BM25Analysis, built)


def _schema(client: MilvusClient, dimension: int) -> Any:
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("collection", DataType.VARCHAR, max_length=64, is_partition_key=True)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=DOC_ID_FIELD_BYTES)
    schema.add_field("chunk_index", DataType.INT64)
    schema.add_field("title", DataType.VARCHAR, max_length=TITLE_FIELD_BYTES)
    schema.add_field("text", DataType.VARCHAR, max_length=CHUNK_FIELD_BYTES)
    analyzer = {"type": "standard"}  # with `english` analysis, of stems the worker wrote (store.analysis)
    schema.add_field(
        "content",
        DataType.VARCHAR,
        max_length=CHUNK_FIELD_BYTES,
        enable_analyzer=True,
        analyzer_params=analyzer,
    )
    schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
    schema.add_field("seq", DataType.INT64)  # the writing job's number (common.fences): deletes go by it
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_function(
        Function(
            name="content_bm25",
            function_type=FunctionType.BM25,
            input_field_names=["content"],
            output_field_names=["sparse"],
        )
    )
    return schema


def _index_params(client: MilvusClient, s: Settings) -> Any:
    params = client.prepare_index_params()
    # Nested "params": milvus-lite silently ignores M/efConstruction given flat.
    params.add_index(
        field_name="dense",
        index_type="HNSW",
        metric_type="COSINE",
        params={"params": {"M": s.hnsw_m, "efConstruction": s.hnsw_ef_construction}},
    )
    params.add_index(
        field_name="sparse",
        index_type="SPARSE_INVERTED_INDEX",
        metric_type="BM25",
        # Nested under "params", as for HNSW: Milvus reads both forms, but milvus-lite reads only this one and
        # silently built BM25 with its own k1 1.5 and b 0.75 when these were passed flat.
        params={"params": {"bm25_k1": s.bm25_k1, "bm25_b": s.bm25_b}},
    )
    return params


def check(client: MilvusClient, name: str, expected: dict[str, str]) -> None:
    """Refuse a collection built with another model, dimension or schema."""
    properties = client.describe_collection(name).get("properties") or {}
    built = {key: properties.get(key) for key in expected}
    if built != expected:
        raise Conflict(
            f"Milvus collection {name!r} was built with {built}; this worker needs {expected}. "
            "Ingest into a new MILVUS_COLLECTION, or set EMBEDDING_MODEL back (a schema older than "
            f"{SCHEMA_VERSION} needs a new MILVUS_COLLECTION: its chunk ids name no version)."
        )
