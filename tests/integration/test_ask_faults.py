"""The ask worker killed in the middle of a question: the question is handed to the next worker and
answered, never left `running`.

A stack of its own (`faultstack`). The question pauses at the `ask` fault point, inside the task, once
its record reads `running` and its heartbeat beats; the test SIGKILLs the whole ask worker there (a
threads pool: one process, so nothing in it is left to requeue the message) and starts a new one, as a
supervisor would. Its message stays unacknowledged in the broker until the heartbeat goes stale; then the
parse worker's sweeper puts it back in the queue (`workers.handoff`), long before the visibility timeout.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.private import VISIBILITY_S
from devstack.processes import celery_argv
from tests.integration.faultstack import FaultStack, documents, fault_stack, wait_for

pytestmark = pytest.mark.integration

# Its beat goes stale after JOB_HEARTBEAT_TIMEOUT_S (8 s); a sweep every JOB_HEARTBEAT_INTERVAL_S (0.5 s)
# hands the question on, and the new worker answers it.
READ_ENDED_WITHIN_S = 30
STORED_ENDED_WITHIN_S = 5
DRAINED_WITHIN_S = 10


@pytest.fixture(scope="module")
def asks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    extra = {"TEST_PAUSE_AT": json.dumps(["ask"]), "TEST_PAUSE_S": "120"}
    with fault_stack(tmp_path_factory.mktemp("asks"), extra) as stack:
        yield stack


def marker(fs: FaultStack) -> Path:
    return fs.tmp / "data" / "faultpoints" / "ask.json"


def stored(fs: FaultStack, job_id: str) -> dict[str, Any]:
    """The job record as Redis holds it (the API's read also derives a lost worker's end from its beats)."""
    return {name: json.loads(value) for name, value in fs.redis().hgetall(f"quarry:job:{job_id}").items()}


def answering(fs: FaultStack, job_id: str) -> dict[str, Any] | None:
    """The pause's pid, once the question paused mid-task with its record running and beating."""
    record = stored(fs, job_id)
    if not marker(fs).exists() or record.get("state") != "running" or f"beat:{job_id}" not in record:
        return None
    return json.loads(marker(fs).read_text())  # type: ignore[no-any-return]


def test_a_ask_worker_killed_mid_question_is_handed_on_and_answered(asks: FaultStack) -> None:
    seeded = asks.run("/api/v1/documents", json={"collection": "ask", "documents": documents("q", 3)})
    assert seeded["state"] == "succeeded", seeded
    question = {"collection": "ask", "question": "How do glaciers change over time?"}
    response = asks.post("/api/v1/ask", json=question)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    paused = wait_for(lambda: answering(asks, job_id), 120, "the question to be answered")
    assert paused["pid"] == asks.proc("ask-worker").pid  # the worker itself runs the task (threads)
    asks.stop("ask-worker", signal.SIGKILL)
    killed_at = time.monotonic()
    at_kill = stored(asks, job_id)
    assert at_kill["state"] == "running" and at_kill.get("result") is None  # killed before it answered
    asks.sup.start("ask-worker", celery_argv("ask", 4, threads=True, name="ask"))

    read = wait_for(lambda: _ended(asks, job_id), READ_ENDED_WITHIN_S, "the job to read as ended")
    read_after_s = time.monotonic() - killed_at
    assert read["state"] == "succeeded" and read["result"]["passages"], read
    assert read_after_s < VISIBILITY_S  # handed on by its stale beat, not by the broker's timeout

    record = wait_for(
        lambda: (r := stored(asks, job_id))["state"] != "running" and r, STORED_ENDED_WITHIN_S, "a stored end"
    )
    stored_after_s = time.monotonic() - killed_at
    print(f"read as ended {read_after_s:.1f} s after the kill, stored as ended {stored_after_s:.1f} s after")
    final = asks.get(f"/api/v1/jobs/{job_id}").json()
    assert record["state"] == final["state"] and _clear_end(final), (record, final)
    client = asks.redis()
    drained = lambda: not client.hlen("unacked") and not client.llen("ask")  # noqa: E731
    wait_for(drained, DRAINED_WITHIN_S, "nothing of the question left in the broker")
    assert asks.deliveries(job_id) == [2]  # the killed delivery, and the new worker's: no third
    assert asks.get(f"/api/v1/jobs/{job_id}").json() == final  # the first end a client read stays the end

    after = asks.run("/api/v1/ask", json=question)  # the new worker answers (the point paused only once)
    assert after["state"] == "succeeded" and after["result"]["passages"], after


def _ended(fs: FaultStack, job_id: str) -> dict[str, Any] | None:
    body: dict[str, Any] = fs.get(f"/api/v1/jobs/{job_id}").json()
    return body if body["state"] in ("succeeded", "failed", "cancelled") else None


def _clear_end(job: dict[str, Any]) -> bool:
    """Succeeded after redelivery, or failed saying its worker was lost."""
    if job["state"] == "succeeded":
        return bool(job["result"])
    return job["state"] == "failed" and "worker lost" in (job["error"] or "")
