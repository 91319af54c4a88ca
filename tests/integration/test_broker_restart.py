"""Redis (also the Celery broker) SIGKILLed and restarted under workers holding messages: the workers live on.

The window that used to kill them (common/broker.py): a worker holding an unacknowledged message and also
waiting for the next one (a free pool slot, so a BRPOP is pending) loses its broker. The ask worker (a
threads pool, one question paused mid-task at the `ask` point, three threads idle) and an ingest worker with
two prefork children (one paused at `before_batch`, one idle) are each caught there: the test SIGKILLs Redis,
restarts it on the same port and data, and asserts that the worker process is still the same running one,
that it reconnected, that the job in flight still ends, and that the worker takes new work.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import celery_argv, start_redis
from tests.integration.crashpoints import arm, disarm, paused, release
from tests.integration.faultstack import FaultStack, documents, fault_stack, wait_for

pytestmark = pytest.mark.integration

POINTS = ["ask", "before_batch"]
QUESTION = {"collection": "broker", "question": "How do glaciers change over time?"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    extra = {"TEST_PAUSE_AT": json.dumps(POINTS), "TEST_PAUSE_S": "120"}
    with fault_stack(tmp_path_factory.mktemp("broker-restart"), extra) as fs:
        for point in POINTS:
            disarm(fs, point)
        # Two children: one holds a batch while the other waits for the next message (INGEST_CONCURRENCY=2).
        fs.stop("ingest-worker")
        fs.sup.start("ingest-worker", celery_argv("ingest", 2))
        seeded = fs.run("/api/v1/documents", json={"collection": "broker", "documents": documents("b", 3)})
        assert seeded["state"] == "succeeded", seeded
        yield fs


def _log_count(fs: FaultStack, name: str, text: str) -> int:
    path: Path = fs.logs / f"{name}.log"
    return path.read_text(errors="replace").count(text) if path.exists() else 0


def restart_redis_under(fs: FaultStack, worker: str) -> None:
    """SIGKILL Redis while `worker` holds its message, restart it, and wait until `worker` reconnected."""
    # Every write on disk before the kill: this test is about the worker, not about Redis' last second.
    fs.redis().config_set("appendfsync", "always")
    lost, connected = (_log_count(fs, worker, text) for text in ("Connection to broker lost", "Connected to"))
    crashed = _log_count(fs, worker, "Unrecoverable error")
    proc = fs.proc(worker)
    fs.stop("redis", signal.SIGKILL)
    wait_for(
        lambda: _log_count(fs, worker, "Connection to broker lost") > lost or proc.poll() is not None,
        30,
        f"{worker} to notice the lost broker",
    )
    start_redis(fs.sup, fs.redis_url, fs.tmp / "redis")
    # Or crashed: a prefork worker that crashed waits for its pool before it exits.
    wait_for(
        lambda: (
            _log_count(fs, worker, "Connected to") > connected
            or proc.poll() is not None
            or _log_count(fs, worker, "Unrecoverable error") > crashed
        ),
        60,
        f"{worker} to reconnect",
    )
    assert _log_count(fs, worker, "Unrecoverable error") == crashed, f"{worker} crashed: see its log"
    assert proc.poll() is None, f"{worker} exited with {proc.returncode}; see {fs.logs / worker}.log"
    assert fs.proc(worker) is proc  # the same process, never restarted


def _ask_paused(fs: FaultStack, job_id: str) -> dict[str, Any] | None:
    marker = fs.tmp / "data" / "faultpoints" / "ask.json"
    state = fs.redis().hget(f"quarry:job:{job_id}", "state")
    return json.loads(marker.read_text()) if marker.exists() and state == '"running"' else None  # type: ignore[no-any-return]


def test_the_ask_worker_survives_a_redis_restart_mid_question(stack: FaultStack) -> None:
    arm(stack, "ask")
    response = stack.post("/api/v1/ask", json=QUESTION)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    pause = wait_for(lambda: _ask_paused(stack, job_id), 120, "the question to pause mid-task")
    assert pause["pid"] == stack.proc("ask-worker").pid  # a threads pool: the worker process itself

    restart_redis_under(stack, "ask-worker")
    release(stack, "ask")
    job = stack.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["passages"], job

    after = stack.run("/api/v1/ask", json=QUESTION)  # it consumes again after the reconnect
    assert after["state"] == "succeeded" and after["result"]["passages"], after
    assert stack.proc("ask-worker").poll() is None


def test_an_ingest_worker_survives_a_redis_restart_mid_batch(stack: FaultStack) -> None:
    docs = documents("r", 2)
    arm(stack, "before_batch")
    job_id = stack.submit("restart", docs)
    paused(stack, "before_batch")  # a child of the worker holds the batch; its other child waits

    restart_redis_under(stack, "ingest-worker")
    release(stack, "before_batch")
    job = stack.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == len(docs), job
    count, rows = stack.chunks("restart")
    assert count == len(rows) > 0 and {row["doc_id"] for row in rows} == {doc["id"] for doc in docs}

    again = stack.run("/api/v1/documents", json={"collection": "restart-2", "documents": documents("s", 1)})
    assert again["state"] == "succeeded", again
    assert stack.proc("ingest-worker").poll() is None
