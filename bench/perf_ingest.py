"""Ingestion throughput: the service end to end, beside the bare model and a naive loop, same chunks.

The bare model and the naive loop run in this process with the ingest worker's torch thread count, so
all three use the same share of the machine; the service's figure includes HTTP, Celery, parsing,
chunking, dedup reads, locks, Milvus upserts and flushes.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench.eval_beir import Client, ingest
from common.settings import Settings
from common.types import Document, Embedder, embedding_text
from ingestion.writing import chunks_of
from workers.runtime import Runtime

NAIVE_BATCH = 32


def chunk_texts(docs: Sequence[dict[str, Any]], embedder: Embedder, settings: Settings) -> list[str]:
    """The texts the service embeds for these documents: same chunker, same title handling."""
    texts: list[str] = []
    for row in docs:
        doc = Document(row["id"], row["text"], row.get("title") or "", {})
        texts += [embedding_text(c, settings.chunk_include_title) for c in chunks_of(doc, embedder, settings)]
    return texts


def service(client: Client, docs: Sequence[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """Upload through the API into a scratch collection, wait for every job, then delete it."""
    collection = f"bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    ingest(client, docs, collection, batch_size=1000, timeout_s=timeout_s)
    seconds = time.perf_counter() - start
    chunks = int(client.get(f"/collections/{collection}")["chunks"])
    client.wait(client.delete(f"/collections/{collection}"), timeout_s)
    return {"seconds": seconds, "chunks": chunks, "chunks_per_s": chunks / seconds}


def bare(texts: Sequence[str], embedder: Embedder, passes: int = 1) -> dict[str, Any]:
    """The service's own embedder (same dtype, token budget, length sorting) with nothing around it; with
    `passes`, the median of that many passes (one pass varied by up to ±9 % on a shared 2-core VM). It
    tokenises the texts, as a loop around `model.encode` does; the service tokenises each document once,
    when it chunks it (`Chunk.token_ids`)."""
    embedder.embed_documents(texts[:16])  # warm-up: first-call allocations
    timings = []
    for _ in range(passes):
        start = time.perf_counter()
        embedder.embed_documents(texts)
        timings.append(time.perf_counter() - start)
    seconds = statistics.median(timings)
    rate = {"seconds": seconds, "chunks": len(texts), "chunks_per_s": len(texts) / seconds}
    return rate | ({"passes_s": timings} if passes > 1 else {})


def naive(texts: Sequence[str], settings: Settings) -> dict[str, Any]:
    """What is commonly written: fp32 `model.encode` in batches of 32, one Milvus insert per batch."""
    from pymilvus import DataType  # noqa: PLC0415 - heavy: only this measurement loads it
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - heavy: only this measurement loads it

    from store.connection import connect  # noqa: PLC0415 - heavy: only this measurement loads it
    from workers.embedder import resolve_model_path  # noqa: PLC0415 - heavy: only this measurement loads it

    model = SentenceTransformer(resolve_model_path(settings.embedding_model), device="cpu")
    # The project's keepalive and channel, not pymilvus's: the naive loop measures code, not a GOAWAY.
    client = connect(settings)
    name = f"bench_naive_{uuid.uuid4().hex[:8]}"
    schema = client.create_schema(auto_id=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=65_535)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=model.get_embedding_dimension())
    index = client.prepare_index_params()
    index.add_index(
        "vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200}
    )
    client.create_collection(name, schema=schema, index_params=index)
    try:
        model.encode(list(texts[:16]))  # warm-up, as for the bare model
        start = time.perf_counter()
        for i in range(0, len(texts), NAIVE_BATCH):
            batch = list(texts[i : i + NAIVE_BATCH])
            vectors = model.encode(batch, batch_size=NAIVE_BATCH, normalize_embeddings=True)
            client.insert(
                name, [{"text": t, "vector": v.tolist()} for t, v in zip(batch, vectors, strict=True)]
            )
        client.flush(name)
        seconds = time.perf_counter() - start
    finally:
        client.drop_collection(name)
        client.close()
    return {"seconds": seconds, "chunks": len(texts), "chunks_per_s": len(texts) / seconds}


def run(client: Client, docs: Sequence[dict[str, Any]], rt: Runtime, timeout_s: float) -> dict[str, Any]:
    """All three on the same documents, one after the other, with ratios.

    The worker's own Runtime loads the embedder and sets the worker's torch thread count, which the
    naive loop then shares.
    """
    settings = rt.settings
    texts = chunk_texts(docs, rt.embedder, settings)
    result: dict[str, Any] = {
        "documents": len(docs),
        "torch_threads": settings.threads_per_worker,
        "service": service(client, docs, timeout_s),
        "bare": bare(texts, rt.embedder),
        "naive": naive(texts, settings),
    }
    rate = {name: result[name]["chunks_per_s"] for name in ("service", "bare", "naive")}
    result["service_over_bare"] = rate["service"] / rate["bare"]
    result["service_over_naive"] = rate["service"] / rate["naive"]
    result["chunk_count_matches"] = result["service"]["chunks"] == len(texts)
    return result
