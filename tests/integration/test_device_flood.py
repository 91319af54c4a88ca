"""Questions that never let go of the device cannot stop ingestion on the real stack (workers/gate.py).

The test process plays questions that hold the device without a break (a flood of them, or a hung ask
worker): it holds the stack's device gate for the whole test. With `QUESTION_GATE_MAX_WAIT_S=2` and
`QUESTION_GATE_BULK_SHARE=0.5` the batch waits 2 s, then runs without waiting for the rest of a 4 s
period, and completes while the gate is still held. Without the share it would run one multiply per 2 s
wait: the bundled model's one pass has 36 check points, so at least 72 s, and the job would not end within
`HELD_DEADLINE_S`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.faultstack import FaultStack, documents, fault_stack, ingest_stage_seconds
from workers.gate import DeviceGate

MAX_WAIT_S = 2.0
HELD_DEADLINE_S = 45.0  # well under the 72 s one multiply per wait would take; far over a slice


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    extra = {"QUESTION_GATE_MAX_WAIT_S": str(MAX_WAIT_S), "QUESTION_GATE_BULK_SHARE": "0.5"}
    with fault_stack(tmp_path_factory.mktemp("flood"), extra) as stack:
        yield stack


def test_a_batch_completes_while_questions_hold_the_device_without_a_break(flooded: FaultStack) -> None:
    docs = documents("flood", 4)  # one batch (INGEST_BATCH_DOCUMENTS=4 in fault stacks)
    gate = DeviceGate(flooded.tmp / "data" / "gate" / "device.lock")  # the stack's DATA_DIR/gate
    with gate.questions():
        job = flooded.wait_job(flooded.submit("flood", docs), HELD_DEADLINE_S)
        assert gate.questions_waiting() is False  # this process holds it (never waits for itself) ...
        assert DeviceGate(gate.path).questions_waiting()  # ... and the rest of the device sees it held
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 4, job
    count, rows = flooded.chunks("flood")
    assert count == len({row["pk"] for row in rows}) > 0
    assert {row["doc_id"] for row in rows} == {doc["id"] for doc in docs}
    # It gave way first (a whole bound), then ran through: both in /metrics for dashboards.
    assert ingest_stage_seconds(flooded, "gave_way") >= MAX_WAIT_S
    assert ingest_stage_seconds(flooded, "ran_through") > 0  # share 0.5: up to the rest of a 4 s period
