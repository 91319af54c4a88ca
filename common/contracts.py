"""Every task Quarry queues, in one place: its name, its queue and its typed payload.

The API builds a payload and sends it by name (it never imports worker code, so never torch); the task
validates its kwargs against the same model when the message arrives, and a retry or a re-send validates the
stored request again, so a message of the wrong shape fails its job with a reason instead of a KeyError deep
in a worker. A new ask option is a field of `StageOptions` plus its use in `workers.retrieval`.

Payloads forbid unknown fields: upgrade the workers before the API when a payload gains one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import InvalidRequest
from common.types import OnDuplicate, SearchMode

PARSE_QUEUE = "parse"  # CPU workers: read uploads, parse PDF/DOCX/HTML and zips, fan out batches (no model)
INGEST_QUEUE = "ingest"  # device workers: chunk, embed and write batches (the model's bulk lane)
ASK_QUEUE = "ask"  # device workers: questions (the model's priority lane)
WEBHOOK_QUEUE = "webhooks"  # its own worker pool (threads: deliveries wait on the network)


class Payload(BaseModel):
    """A task's kwargs: plain JSON on the wire (`Contract.kwargs`), checked on arrival (`Contract.parse`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageOptions(Payload):
    """An ask's per-question stage switches; None (or absent) takes the worker's setting."""

    mode: SearchMode | None = Field(default=None, description="dense, sparse (BM25) or hybrid retrieval")
    exact: bool = Field(default=False, description="exhaustive dense search, a reference for HNSW recall")
    ef: int | None = Field(default=None, ge=1, le=32_768, description="HNSW search breadth")
    rrf_k: int | None = Field(default=None, ge=1, le=10_000, description="the k of reciprocal rank fusion")
    candidates: int | None = Field(default=None, ge=1, le=1_000, description="passages the reranker sees")
    documents: bool | None = Field(
        default=None,
        description="each document once: its best chunk ranks it before reranking, and the result also "
        "lists `documents`, each with its score and best passages",
    )
    idf: bool | None = Field(
        default=None,
        description="the MaxSim reranker weighs each question token by its IDF in the collection",
    )


class IngestJob(Payload):
    """The coordinator: parse an upload (`source`, relative to the upload directory) into batch files."""

    collection: str
    source: dict[str, Any]
    total: int = Field(ge=0)
    on_duplicate: OnDuplicate = "skip"
    only: list[str] | None = None  # a retry: just these document ids
    seq: int = Field(default=0, ge=0)  # the job's number: a delete accepted later wins (common.fences)


class IngestBatch(Payload):
    """One batch file of an ingest job: chunk, embed and write its documents."""

    job_id: str
    index: int = Field(ge=0)
    path: str
    collection: str
    on_duplicate: OnDuplicate = "skip"
    seq: int = Field(default=0, ge=0)


class Ask(Payload):
    question: str
    collection: str
    top_k: int = Field(ge=1)
    reranker: str | None = None
    filters: dict[str, Any] = Field(default_factory=dict)
    options: StageOptions = Field(default_factory=StageOptions)


class Delete(Payload):
    """Documents (or, with no ids, the whole collection) written by jobs numbered below `seq`."""

    collection: str
    doc_ids: list[str] | None = None
    seq: int = Field(default=0, ge=0)


class Settle(Payload):
    """A failed batch's documents, pruned to one whole version each once Milvus is back."""

    collection: str
    doc_ids: list[str]
    owner: str


class Webhook(Payload):
    job_id: str
    event_id: str


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True)
class Contract(Generic[P]):
    """A task's name, queue and payload model."""

    name: str
    queue: str
    payload: type[P]

    def kwargs(self, payload: P) -> dict[str, Any]:
        """The message's kwargs (JSON only: the broker takes no pickles; unset optional fields left out)."""
        if not isinstance(payload, self.payload):
            raise TypeError(f"{self.name} takes {self.payload.__name__}, not {type(payload).__name__}")
        return payload.model_dump(mode="json", exclude_none=True)

    def parse(self, kwargs: dict[str, Any]) -> P:
        """A message's or a stored request's kwargs, checked; InvalidRequest (not retried) names the fault."""
        try:
            return self.payload.model_validate(kwargs)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise InvalidRequest(f"{self.name}: malformed task payload ({problems})") from None


INGEST = Contract("quarry.ingest", PARSE_QUEUE, IngestJob)
INGEST_BATCH = Contract("quarry.ingest_batch", INGEST_QUEUE, IngestBatch)
ASK = Contract("quarry.ask", ASK_QUEUE, Ask)
# Deletes are writes: they share the batches' queue (milvus-lite allows one writer at a time).
DELETE = Contract("quarry.delete", INGEST_QUEUE, Delete)
SETTLE = Contract("quarry.settle", INGEST_QUEUE, Settle)
# Its own queue, so a slow receiver never delays questions in the broker.
WEBHOOK = Contract("quarry.webhook", WEBHOOK_QUEUE, Webhook)
CONTRACTS: tuple[Contract[Any], ...] = (INGEST, INGEST_BATCH, ASK, DELETE, SETTLE, WEBHOOK)

INGEST_TASK, INGEST_BATCH_TASK, ASK_TASK = INGEST.name, INGEST_BATCH.name, ASK.name
DELETE_TASK, SETTLE_TASK, WEBHOOK_TASK = DELETE.name, SETTLE.name, WEBHOOK.name
TASK_QUEUES = {contract.name: contract.queue for contract in CONTRACTS}
# The task that runs a job of each kind (a job record's `kind`; its task id is the job id).
JOB_CONTRACTS: dict[str, Contract[Any]] = {"ingest": INGEST, "ask": ASK, "delete": DELETE}
JOB_TASKS = {kind: contract.name for kind, contract in JOB_CONTRACTS.items()}
