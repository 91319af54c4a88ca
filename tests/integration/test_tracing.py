"""Tracing on a real stack (its own API and workers, Redis database and Milvus collection, tracing on):
spans go over OTLP/HTTP to a collector stand-in that writes them to a file, and one ask is one trace from
the API's request through the Celery publish to the worker's task, with every stage and the Milvus and
Redis calls inside it; an ingest is one trace down to its batches' embedding and Milvus writes."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from devstack.processes import Supervisor, free_port
from tests.integration.conftest import TEST_REDIS_DB, Stack, start_service

pytestmark = pytest.mark.integration
TRACE_DB = 10 if TEST_REDIS_DB != 10 else 13  # 8, 9, 11, 12: other modules' databases
TASK_ID = "messaging.message.id"  # what the Celery instrumentation calls the task id
KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


class Collector(BaseHTTPRequestHandler):
    """OTLP/HTTP's trace endpoint: each exported span, one JSON line in `self.server.spans_file`."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        lines = []
        for resource in request.resource_spans:
            attrs = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    lines.append(json.dumps(_span(span, attrs["service.name"])))
        with self.server.lock, self.server.spans_file.open("a") as out:  # type: ignore[attr-defined]
            out.write("".join(line + "\n" for line in lines))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _span(span: Any, service: str) -> dict[str, Any]:
    attributes = {}
    for kv in span.attributes:
        value = kv.value
        attributes[kv.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return {
        "trace": span.trace_id.hex(),
        "id": span.span_id.hex(),
        "parent": span.parent_span_id.hex() or None,
        "name": span.name,
        "kind": KINDS.get(span.kind, str(span.kind)),
        "service": service,
        "attributes": {k: v for k, v in attributes.items() if isinstance(v, str | int | float | bool)},
    }


@dataclass
class Traced:
    stack: Stack
    spans_file: Path

    def spans(self) -> list[dict[str, Any]]:
        if not self.spans_file.exists():
            return []
        return [json.loads(line) for line in self.spans_file.read_text().splitlines()]

    def trace_of(
        self, job_id: str, needed: set[str], timeout_s: float = 60, each: int = 1
    ) -> list[dict[str, Any]]:
        """The spans of the trace holding the task run of `job_id`, once they include every name in
        `needed`, `each` times at least (each process exports on its own schedule)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            runs = [s for s in spans if s["kind"] == "consumer" and s["attributes"].get(TASK_ID) == job_id]
            if runs:
                trace = [s for s in spans if s["trace"] == runs[0]["trace"]]
                names = Counter(s["name"] for s in trace)
                if all(names[name] >= each for name in needed):
                    return trace
            if time.monotonic() > deadline:
                names = sorted({s["name"] for s in spans})
                raise AssertionError(
                    f"no complete trace for job {job_id} in {timeout_s} s; span names seen: {names}"
                )
            time.sleep(0.2)  # the spans arrive in the file: there is no event to wait on but the file


@pytest.fixture(scope="module")
def traced(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    tmp = tmp_path_factory.mktemp("traced")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    server.spans_file = tmp / "spans.jsonl"  # type: ignore[attr-defined]
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    redis_url = stack.redis_url.rsplit("/", 1)[0] + f"/{TRACE_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = {
        **stack.env,
        "REDIS_URL": redis_url,
        "MILVUS_COLLECTION": "quarry_traced",  # its own Milvus collection: writers never share one
        "DATA_DIR": str(tmp / "data"),
        "API_PORT": str(port),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    sup = Supervisor(env=env, log_dir=tmp / "logs")
    try:
        url = start_service(sup, port, ask_threads=2)
        yield Traced(Stack(url=url, redis_url=redis_url, logs=tmp / "logs", env=env), server.spans_file)  # type: ignore[attr-defined]
    finally:
        sup.stop()
        server.shutdown()
        redis.Redis.from_url(redis_url).flushdb()


def _tree(trace: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The spans by id, checked to form one tree: one root, every other span's parent in the trace."""
    by_id = {s["id"]: s for s in trace}
    roots = [s for s in trace if s["parent"] is None]
    assert len(roots) == 1, [(s["name"], s["service"]) for s in roots]
    orphans = [s["name"] for s in trace if s["parent"] is not None and s["parent"] not in by_id]
    assert not orphans, orphans
    return by_id


def _ancestors(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    names = []
    while span["parent"] is not None:
        span = by_id[span["parent"]]
        names.append(span["name"])
    return names


def _one(trace: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in trace if s["name"] == name]
    assert len(found) == 1, (name, found)
    return found[0]


def test_one_ask_is_one_trace_from_the_api_to_the_worker_with_every_stage(traced: Traced) -> None:
    docs = [{"id": "moon", "text": "The Moon's pull raises the tides of the oceans twice a day."}]
    ingested = traced.stack.run("/api/v1/documents", json={"collection": "traced", "documents": docs})
    assert ingested["state"] == "succeeded", ingested
    asked = traced.stack.post(
        "/api/v1/ask", json={"question": "What raises the tides?", "collection": "traced"}
    )
    assert asked.status_code == 202, asked.text
    job_id = asked.json()["job_id"]
    assert traced.stack.wait_job(job_id)["state"] == "succeeded"

    trace = traced.trace_of(job_id, {"embed", "search", "rerank", "milvus.search"})
    by_id = _tree(trace)
    root = next(s for s in trace if s["parent"] is None)
    assert (root["kind"], root["service"]) == ("server", "quarry-api") and "/api/v1/ask" in root["name"]
    publish = _one(trace, "apply_async/quarry.ask")
    run = _one(trace, "run/quarry.ask")
    assert (publish["kind"], publish["service"]) == ("producer", "quarry-api")
    assert (run["kind"], run["service"], run["parent"]) == ("consumer", "quarry-worker", publish["id"])
    for stage in ("embed", "search", "rerank"):
        assert run["name"] in _ancestors(_one(trace, stage), by_id), stage
    assert _one(trace, "milvus.search")["parent"] == _one(trace, "search")["id"]
    redis_calls = [s for s in trace if s["kind"] == "client" and s["attributes"].get("db.system") == "redis"]
    assert {s["service"] for s in redis_calls} == {"quarry-api", "quarry-worker"}  # job writes on both sides
    assert {s["trace"] for s in traced.spans() if s["attributes"].get(TASK_ID) == job_id} == {root["trace"]}
    # By now the start's /readyz polls, the broker's polls and readiness refreshes ran for many export
    # periods: none of them started a trace (`RequestRoots`), nor did a probe (`EXCLUDED_URLS`).
    roots = [s for s in traced.spans() if s["parent"] is None]
    assert all(s["kind"] in ("server", "consumer") for s in roots), {(s["name"], s["kind"]) for s in roots}
    assert not [s["name"] for s in roots if any(p in s["name"] for p in ("healthz", "readyz", "metrics"))]


def test_an_ingest_is_one_trace_down_to_its_batches_writes(traced: Traced) -> None:
    docs = [
        {"id": f"tide-{i}", "text": f"Spring tide number {i} is higher than a neap tide."} for i in range(3)
    ]
    accepted = traced.stack.post("/api/v1/documents", json={"collection": "traced", "documents": docs})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert traced.stack.wait_job(job_id)["state"] == "succeeded"
    stages = ("ingest.embed", "ingest.write", "milvus.insert")
    # Two batches: a small upload is spread over the ingest processes (INGEST_SMALL_JOB_BATCHES).
    trace = traced.trace_of(job_id, {"run/quarry.ingest_batch", *stages}, each=2)
    by_id = _tree(trace)
    batches = [s for s in trace if s["name"] == "run/quarry.ingest_batch"]
    assert len(batches) == 2, batches
    for batch in batches:  # the fan-out's publish carried the context on to each
        assert "run/quarry.ingest" in _ancestors(batch, by_id)
    for name in stages:  # each batch's, under a batch
        spans = [s for s in trace if s["name"] == name]
        assert len(spans) == 2, (name, spans)
        assert all("run/quarry.ingest_batch" in _ancestors(span, by_id) for span in spans), name
