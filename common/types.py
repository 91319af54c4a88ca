"""Shared value types and the narrow facades (protocols) that workers and ingestion depend on.

Kept free of torch and pymilvus so the API can import it cheaply; numpy arrays are typed loosely.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Metadata = dict[str, Any]


@dataclass(frozen=True)
class Document:
    """A parsed document, ready to chunk."""

    id: str
    text: str
    title: str = ""
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """One piece of a document; `text` is what gets embedded and indexed for BM25."""

    doc_id: str
    index: int
    text: str
    title: str = ""
    metadata: Metadata = field(default_factory=dict)
    # The model's ids of `embedding_text(chunk)`, special tokens left out, where chunking knows them to be
    # exactly what tokenising that text gives (`ingestion.chunking`): the embedder then skips tokenising the
    # text again, about as much CPU as chunking itself. None: the embedder tokenises the text.
    token_ids: tuple[int, ...] | None = field(default=None, compare=False, repr=False)


def title_prefix(title: str, include_title: bool) -> str:
    """What precedes a chunk's text when it is embedded and BM25-indexed; chunking budgets for it."""
    title = title.strip()
    return f"{title}\n" if include_title and title else ""


def embedding_text(chunk: Chunk, include_title: bool) -> str:
    """The exact string that is embedded, BM25-indexed and reranked (`ingestion.chunking` budgets for it):
    one function for the ingestion, the store and the reranker, so the three never read different text."""
    return title_prefix(chunk.title, include_title) + chunk.text


SearchMode = Literal["dense", "bm25", "hybrid"]
RerankerBackend = Literal["maxsim", "cross-encoder"]
OnDuplicate = Literal["skip", "replace", "error"]
BM25Analysis = Literal["english", "standard"]  # how BM25 reads text (store.analysis)
"""What an ingest does with a document id already stored (docs/api.md, duplicates)."""


@dataclass(frozen=True)
class SearchOptions:
    """How one search runs: settings (the one place for these numbers) plus a request's switches."""

    ef: int
    rrf_k: int
    dense_candidates: int
    bm25_candidates: int
    mode: SearchMode = "hybrid"
    exact: bool = False  # brute-force dense search: the reference HNSW's recall is measured against


@dataclass(frozen=True)
class Hit:
    """One chunk returned by the vector store with the scores of the stages that ranked it."""

    doc_id: str
    chunk_index: int
    text: str
    title: str
    metadata: Metadata
    fusion_score: float | None = None
    dense_score: float | None = None
    bm25_score: float | None = None


@dataclass(frozen=True)
class Ranked:
    """A reranked passage: `index` into the passages given, `score` orders the result."""

    index: int
    score: float
    model_score: float


@dataclass(frozen=True)
class Tokens:
    """A text's tokens as chunking reads them, no special tokens: each one's character span; and, from a
    tokenizer that can vouch for them, the model's ids and which tokens begin a word (a WordPiece token
    that does not continue the one before). A run of whole words then has the ids its text would get."""

    spans: list[tuple[int, int]]
    ids: list[int] | None = None
    word_starts: list[bool] | None = None


class Tokenizer(Protocol):
    """What chunking needs from a tokenizer: character spans of the tokens, no special tokens."""

    def tokens(self, text: str) -> Tokens:
        """Each token's span, with ids and word starts where the tokenizer vouches for them."""
        ...

    @property
    def splits_at_word_edges(self) -> bool:
        """True when no token crosses whitespace or punctuation (BERT's pre-tokenizer, every BGE model's):
        a text cut there tokenises on either side as it did whole, so chunking need not check each window
        by tokenising it again (`ingestion.chunking._fit`)."""
        ...


class Embedder(Protocol):
    model_name: str
    dimension: int
    max_tokens: int

    def embed_documents(
        self, texts: Sequence[str], token_ids: Sequence[Sequence[int] | None] | None = None
    ) -> npt.NDArray[np.float32]:
        """Unit vectors of `texts`; `token_ids`, where given, are the ids of the text (`Chunk.token_ids`)."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...

    def token_vectors(self, texts: Sequence[str], *, query: bool) -> list[npt.NDArray[np.float32]]: ...

    def tokens(self, text: str) -> Tokens: ...

    @property
    def splits_at_word_edges(self) -> bool: ...

    def token_ids(self, texts: Sequence[str], *, query: bool) -> list[list[int]]:
        """The ids `token_vectors` embeds, special tokens included."""
        ...

    @property
    def special_ids(self) -> frozenset[int]: ...


class Reranker(Protocol):
    name: str

    def rerank(self, query: str, passages: Sequence[str], top_k: int) -> list[Ranked]: ...

    def rerank_batch(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        idf: Sequence[npt.NDArray[np.float32] | None] | None = None,
    ) -> list[list[Ranked]]:
        """Full rankings for many (query, passages) items, computed together; `idf`, per item, the token IDF
        of its collection for a reranker that weighs question tokens (None: unweighted)."""
        ...


class VectorStore(Protocol):
    def insert(
        self,
        collection: str,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        hashes: Mapping[str, str],
        seq: int = 0,
    ) -> int: ...

    def document_versions(self, collection: str, doc_ids: Sequence[str]) -> dict[str, dict[str, int]]: ...

    def prune(self, collection: str, keep: Mapping[str, Collection[str]]) -> None: ...

    def search(
        self,
        collection: str,
        query_texts: Sequence[str],
        query_vectors: npt.NDArray[np.float32],
        limit: int,
        filters: dict[str, Any] | None = None,
        *,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]:
        """Hits for each query (texts for BM25, vectors for dense), in the order given."""
        ...

    def delete(
        self, collection: str, doc_ids: Sequence[str] | None = None, before_seq: int | None = None
    ) -> int: ...

    def flush(self) -> None: ...

    def flush_due(self) -> None:
        """Flush if `milvus_flush_interval_s` has passed since this process's last flush."""
        ...

    def sample_texts(self, collection: str, limit: int) -> list[str]: ...


class UploadStore(Protocol):
    """Uploads and batch files by key (`<job id>/<file>`): a local directory or an object store
    (`store.uploads`). Failing to reach it raises ServiceUnavailable."""

    def staging(self, job_id: str) -> Path:
        """A local directory to write an upload into before `publish`."""
        ...

    def publish(self, job_id: str) -> None:
        """Store what was staged for the job (and drop the staging copy)."""
        ...

    def write_text(self, key: str, text: str) -> None: ...

    def read_text(self, key: str) -> str: ...

    def local(self, key: str) -> AbstractContextManager[Path]:
        """A local file holding the stored one, for as long as the block runs."""
        ...

    def exists(self, key: str) -> bool: ...

    def remove(self, prefix: str) -> None:
        """Delete every file under `prefix` (a job's directory, or its batches)."""
        ...

    def touch(self, prefix: str) -> None: ...

    def stale(self, older_than: float) -> list[str]:
        """Top-level prefixes (job directories) unchanged since `older_than` (Unix time)."""
        ...
