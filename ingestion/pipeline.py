"""Ingest documents: chunk, embed, write to the vector store, report progress. Plain functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from common.errors import DocumentError
from common.settings import Settings
from common.types import Chunk, Document, Embedder, VectorStore
from ingestion.chunking import chunk_document, embedding_text
from ingestion.parsing import parse_file, read_documents_jsonl

Progress = Callable[[int, int], None]


def load_documents(source: dict[str, Any], uploads: Path) -> Iterator[Document]:
    """Documents of an upload as the API stored them; paths are relative to the shared upload dir."""
    if source.get("kind") == "jsonl":
        yield from read_documents_jsonl(uploads / source["path"])
    elif source.get("kind") == "files":
        for item in source["files"]:
            yield parse_file(uploads / item["path"], name=item["name"])
    else:
        raise DocumentError(f"unknown upload kind {source.get('kind')!r}")


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(docs)
    while batch := list(islice(iterator, size)):
        yield batch


def chunk_batch(docs: list[Document], embedder: Embedder, settings: Settings) -> list[Chunk]:
    chunks: list[Chunk] = []
    for doc in docs:
        chunks.extend(
            chunk_document(
                doc,
                embedder,
                chunk_tokens=settings.chunk_tokens,
                overlap_tokens=settings.chunk_overlap_tokens,
                max_tokens=embedder.max_tokens,
                include_title=settings.chunk_include_title,
            )
        )
    return chunks


def ingest_documents(
    docs: Iterable[Document],
    *,
    collection: str,
    total: int,
    embedder: Embedder,
    store: VectorStore,
    settings: Settings,
    progress: Progress,
) -> dict[str, Any]:
    """Write every document's chunks; re-ingesting a document replaces its old chunks (no orphans)."""
    done = written = 0
    for batch in _batches(docs, settings.ingest_batch_documents):
        chunks = chunk_batch(batch, embedder, settings)
        texts = [embedding_text(chunk, settings.chunk_include_title) for chunk in chunks]
        vectors = embedder.embed_documents(texts)
        store.delete(collection, [doc.id for doc in batch])
        written += store.insert(collection, chunks, vectors)
        done += len(batch)
        progress(done, total)
    store.flush()
    return {"collection": collection, "documents": done, "chunks": written}
