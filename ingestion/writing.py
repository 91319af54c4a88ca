"""Chunk, embed and write the documents of one batch, so a document that breaks a shared call fails alone.

Each stage runs once over the whole batch (one embedding call, one Milvus upsert); when a call fails for a
reason that is not an outage, `common.isolation.isolate` splits it until only the culprit fails, with a
reason that names it. Vectors survive a failed write, so a bad row never costs a second embedding pass.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from common import metrics
from common.fields import printable
from common.isolation import NEVER_CAUGHT, describe, isolate
from common.reports import Outcome
from common.settings import Settings
from common.types import Chunk, Document, Embedder, VectorStore, embedding_text
from ingestion.chunking import chunk_document


@dataclass
class Pending:
    """A document to write: its content hash (its new version) and its chunks."""

    doc: Document
    digest: str
    chunks: list[Chunk] = field(default_factory=list)
    vectors: npt.NDArray[np.float32] | None = None


def chunks_of(doc: Document, embedder: Embedder, settings: Settings) -> list[Chunk]:
    """The service's chunking of one document (the benchmark chunks the same way)."""
    return chunk_document(
        doc,
        embedder,
        chunk_tokens=settings.chunk_tokens,
        overlap_tokens=settings.chunk_overlap_tokens,
        max_tokens=embedder.max_tokens,
        include_title=settings.chunk_include_title,
    )


def _failed(pending: Pending, stage: str, exc: BaseException) -> Outcome:
    return Outcome(
        pending.doc.id, "failed", f"{printable(pending.doc.id)}: could not be {stage} ({describe(exc)})"
    )


def _chunk(
    pending: list[Pending], embedder: Embedder, settings: Settings, outcomes: list[Outcome]
) -> list[Pending]:
    """Chunk each document on its own (the tokenizer sees one text at a time here)."""
    ready = []
    for item in pending:
        try:
            item.chunks = chunks_of(item.doc, embedder, settings)
        except NEVER_CAUGHT:
            raise
        except Exception as exc:  # a tokenizer or chunking failure costs this document only
            outcomes.append(_failed(item, "chunked", exc))
            continue
        ready.append(item)
    return ready


def _embed(
    pending: list[Pending], embedder: Embedder, settings: Settings, outcomes: list[Outcome]
) -> list[Pending]:
    """One embedding call over every chunk of the batch; a failure is narrowed down to its documents."""

    def run(part: Sequence[Pending]) -> list[npt.NDArray[np.float32]]:
        chunks = [c for item in part for c in item.chunks]
        texts = [embedding_text(c, settings.chunk_include_title) for c in chunks]
        vectors = embedder.embed_documents(texts, [c.token_ids for c in chunks])  # ids chunking made
        bounds = np.cumsum([0] + [len(item.chunks) for item in part])
        return [vectors[bounds[i] : bounds[i + 1]] for i in range(len(part))]

    if not pending:
        return []
    metrics.emit(metrics.batch("chunks", sum(len(item.chunks) for item in pending)))
    with metrics.timed("ingest", "embed"):
        results = isolate(pending, run, what="embedding call")
    ready = []
    for item, result in zip(pending, results, strict=True):
        if isinstance(result, Exception):
            outcomes.append(_failed(item, "embedded", result))
        else:
            item.vectors = result
            ready.append(item)
    return ready


def _write(
    pending: list[Pending], collection: str, store: VectorStore, seq: int, outcomes: list[Outcome]
) -> None:
    """One upsert for the batch. Each new version goes beside the version it replaces, which the caller
    prunes once this returns: a kill in between leaves two whole versions, never none or half of one."""

    def run(part: Sequence[Pending]) -> list[int]:
        chunks = [c for item in part for c in item.chunks]
        vectors = np.concatenate([item.vectors for item in part if item.vectors is not None])
        store.insert(collection, chunks, vectors, {item.doc.id: item.digest for item in part}, seq)
        return [len(item.chunks) for item in part]

    with metrics.timed("ingest", "write"):
        results = isolate(pending, run, what="Milvus write") if pending else []
    for item, result in zip(pending, results, strict=True):
        if isinstance(result, Exception):
            outcomes.append(_failed(item, "written", result))
        else:
            outcomes.append(Outcome(item.doc.id, "succeeded", None, result))


def write_documents(
    pending: list[Pending],
    *,
    collection: str,
    embedder: Embedder,
    store: VectorStore,
    settings: Settings,
    seq: int = 0,
) -> list[Outcome]:
    """Chunk, embed and upsert; one outcome per document. Outages (Milvus, Redis) raise: the task retries."""
    outcomes: list[Outcome] = []
    with metrics.timed("ingest", "chunk"):
        chunked = _chunk(pending, embedder, settings, outcomes)
    embedded = _embed(chunked, embedder, settings, outcomes)
    if settings.test_batch_delay_s:  # test only: a window in which fault tests kill the worker
        time.sleep(settings.test_batch_delay_s)
    _write(embedded, collection, store, seq, outcomes)
    return outcomes
