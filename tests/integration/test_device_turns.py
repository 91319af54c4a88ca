"""Questions first on the real stack: the ingest worker's embedding waits while a question holds the device.

The test process plays the question: it holds the stack's device gate (workers/gate.py) as an ask worker
does while it answers a batch. An upload's batch starts (its documents' locks are taken), cannot embed
while the question lasts, and completes, whole, once the question ends; the pause is in /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.faultstack import (
    FaultStack,
    batch_in_write_window,
    documents,
    fault_stack,
    ingest_stage_seconds,
    wait_for,
)
from workers.gate import DeviceGate

QUESTION_S = 4.0  # how long the test's question holds the device (the scenario, not a synchronisation)


@pytest.fixture(scope="module")
def turns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    # No bound on the wait: the batch must not embed at all while the question lasts.
    with fault_stack(tmp_path_factory.mktemp("turns"), {"QUESTION_GATE_MAX_WAIT_S": "600"}) as stack:
        yield stack


def test_a_batch_embeds_only_after_the_question_holding_the_device_ends(turns: FaultStack) -> None:
    docs = documents("turn", 4)  # one batch (INGEST_BATCH_DOCUMENTS=4 in fault stacks)
    gate = DeviceGate(turns.tmp / "data" / "gate" / "device.lock")  # the stack's DATA_DIR/gate
    assert ingest_stage_seconds(turns, "gave_way") == 0
    with gate.questions():
        job_id = turns.submit("turns", docs)
        wait_for(lambda: batch_in_write_window(turns, job_id, "turns", docs), 90, "the batch to start")
        started = time.monotonic()
        time.sleep(QUESTION_S)
        during = turns.get(f"/api/v1/jobs/{job_id}").json()
        held_s = time.monotonic() - started
    assert during["state"] == "running" and during["progress"]["done"] == 0, during  # nothing embedded
    job = turns.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 4, job
    count, rows = turns.chunks("turns")
    assert count == len({row["pk"] for row in rows}) > 0 and {row["doc_id"] for row in rows} == {
        doc["id"] for doc in docs
    }
    # The batch paused from when it reached its first pass until the question ended: nearly all of it.
    assert ingest_stage_seconds(turns, "gave_way") >= held_s - 1.0


def test_without_questions_the_batch_never_pauses(turns: FaultStack) -> None:
    before = ingest_stage_seconds(turns, "gave_way")
    job = turns.run("/api/v1/documents", json={"collection": "alone", "documents": documents("alone", 4)})
    assert job["state"] == "succeeded", job
    assert ingest_stage_seconds(turns, "gave_way") == before
