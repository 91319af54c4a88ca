"""A stack of its own for the fault tests: it kills and restarts processes, so it never shares them.

Its settings are shrunk so each fault resolves in seconds: small batches that pause mid-write
(`TEST_BATCH_DELAY_S`; a small upload is not spread over two), heartbeats every 0.5 s (lost after 8 s),
two deliveries per task, two quick retries, a 20 s visibility timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from common.locks import DocumentLocks
from devstack.private import FAULT_SETTINGS, private_env
from devstack.processes import (
    Supervisor,
    celery_argv,
    port_open,
    start_milvus,
    start_redis,
)
from store.connection import connect
from tests.integration.conftest import Stack, healthy, start_service

MILVUS_COLLECTION = "quarry_faults"
FAULT_TEST_SETTINGS = {
    **FAULT_SETTINGS,
    "INGEST_BATCH_DOCUMENTS": "4",
    "INGEST_SMALL_JOB_BATCHES": "1",  # an upload of 4 documents is one batch: the tests stage faults in it
    "TEST_BATCH_DELAY_S": "1.5",
}


@dataclass(kw_only=True)
class FaultStack(Stack):
    sup: Supervisor
    tmp: Path
    milvus_uri: str

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        """The latest process started under `name`."""
        return [proc for proc_name, proc in self.sup.procs if proc_name == name][-1]

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self.proc(name)
        os.killpg(proc.pid, sig)
        proc.wait(30)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def beats(self, job_id: str) -> dict[str, dict[str, Any]]:
        return batch_beats(self.redis(), job_id)

    def deliveries(self, job_id: str) -> list[int]:
        """How often each attempt of each of the job's tasks was delivered."""
        return sorted(int(value) for value in self.redis().hvals(f"quarry:job:{job_id}:deliveries"))

    def attempts(self, job_id: str) -> list[list[int]]:
        """For each batch of the job, the attempts (Celery retries) it was delivered for."""
        per_task: dict[str, list[int]] = {}
        for name in self.redis().hkeys(f"quarry:job:{job_id}:deliveries"):
            task_id, attempt = name.split(":")
            if task_id != job_id:
                per_task.setdefault(task_id, []).append(int(attempt))
        return sorted(sorted(attempts) for attempts in per_task.values())

    def milvus_port_open(self) -> bool:
        return port_open("127.0.0.1", int(self.milvus_uri.rsplit(":", 1)[1]))

    def wait_job(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        """Like a patient client: a 503 (Redis restarting) means ask again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = self.get(f"/api/v1/jobs/{job_id}", params={"wait": 5})
            if response.status_code == 503:
                time.sleep(0.5)
                continue
            body: dict[str, Any] = response.json()
            if body["state"] in ("succeeded", "failed", "cancelled"):
                return body
        raise AssertionError(f"job {job_id} did not finish in {timeout_s} s; logs in {self.logs}")

    def submit(self, collection: str, docs: list[dict[str, Any]]) -> str:
        response = self.post("/api/v1/documents", json={"collection": collection, "documents": docs})
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def restart_redis(self) -> None:
        """Start the stack's redis-server again (same port and data), once the API reaches it."""
        start_redis(self.sup, self.redis_url, self.tmp / "redis")
        wait_for(lambda: healthy(self.url), 30, "the API to reach Redis again")

    def start_ingest_worker(self) -> None:
        self.sup.start("ingest-worker", celery_argv("ingest", 1))

    def chunks(self, collection: str) -> tuple[int, list[dict[str, Any]]]:
        """Straight from Milvus: the row count and every row's pk, doc id, chunk index, version and text."""
        # A connection of its own: the faults restart milvus-lite, and a shared one may be a dead channel.
        client = connect(self.milvus_uri, timeout_s=10)
        try:
            client.load_collection(MILVUS_COLLECTION)  # a restarted milvus-lite leaves it released
            expr = f'collection == "{collection}"'
            count = client.query(
                MILVUS_COLLECTION, filter=expr, output_fields=["count(*)"], consistency_level="Strong"
            )[0]["count(*)"]
            rows = client.query(
                MILVUS_COLLECTION,
                filter=expr,
                output_fields=["pk", "doc_id", "chunk_index", "content_hash", "text"],
                limit=16_384,
                consistency_level="Strong",
            )
        finally:
            client.close()
        return int(count), rows


def batch_beats(client: redis.Redis, job_id: str) -> dict[str, dict[str, Any]]:
    """Heartbeats of the job's running batches (task id -> beat), from a client that decodes."""
    raw = client.hgetall(f"quarry:job:{job_id}")
    return {
        name.removeprefix("beat:"): json.loads(value)
        for name, value in raw.items()
        if name.startswith("beat:") and name != f"beat:{job_id}"
    }


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    """Poll until `check()` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextmanager
def fault_stack(tmp: Path, extra: dict[str, str] | None = None) -> Iterator[FaultStack]:
    """The whole service on private Redis and Milvus, with FAULT_SETTINGS (and `extra`); stopped on exit.
    One ingest process, as `start_ingest_worker` restarts it: each fault is staged in the one process that
    holds a batch (tests that need two add a second worker); the session stack runs `make run`'s pool."""
    env = private_env(tmp, MILVUS_COLLECTION, {**FAULT_TEST_SETTINGS, **(extra or {})})
    api_port = int(env["API_PORT"])
    sup = Supervisor(env=env, log_dir=tmp / "logs")
    try:
        start_redis(sup, env["REDIS_URL"], tmp / "redis")
        start_milvus(sup, env["MILVUS_URI"], tmp / "milvus")
        url = start_service(sup, api_port, ask_threads=4, ingest_processes=1)
        logs, uri = tmp / "logs", env["MILVUS_URI"]
        yield FaultStack(url=url, redis_url=env["REDIS_URL"], logs=logs, sup=sup, tmp=tmp, milvus_uri=uri)
    finally:
        sup.stop()


def documents(prefix: str, count: int) -> list[dict[str, Any]]:
    """Documents of several chunks each (128-token chunks), so a missing chunk would show."""
    topics = ["glaciers", "volcanoes", "tides", "bees", "comets", "forests", "deserts", "coral"]
    return [
        {
            "id": f"{prefix}-{i}",
            "title": f"Notes on {topics[i % len(topics)]} {i}",
            "text": " ".join(
                f"Sentence {n} of document {i} explains how {topics[i % len(topics)]} change over time."
                for n in range(30)
            ),
        }
        for i in range(count)
    ]


def stored_once(fs: FaultStack, collection: str, docs: list[dict[str, Any]]) -> None:
    """Every document has rows in Milvus, and no chunk is stored twice (Milvus's count agrees)."""
    count, rows = fs.chunks(collection)
    assert count == len(rows) == len({row["pk"] for row in rows}) > len(docs)
    assert {row["doc_id"] for row in rows} == {doc["id"] for doc in docs}


def batch_in_write_window(fs: FaultStack, job_id: str, collection: str, docs: list[dict[str, Any]]) -> Any:
    """The beat of the batch holding these documents' locks (between embedding and writing), or None."""
    locks = [DocumentLocks.key(collection, doc["id"]) for doc in docs]
    if not fs.redis().exists(*locks):
        return None
    beats = list(fs.beats(job_id).values())
    return beats[0] if len(beats) == 1 else None


def ingest_stage_seconds(stack: Stack, stage: str) -> float:
    """The stack's /metrics: seconds the ingest pipeline spent in `stage` so far, over every batch."""
    text = requests.get(stack.url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "quarry_stage_duration_seconds_sum"
        and sample.labels == {"pipeline": "ingest", "stage": stage}
    )
