"""A fault stack whose ingest workers pause at named points of the write path (`common.faultpoints`).

Tests arm a point, wait for a process to pause there, then kill it (or a server) right in that window; a
clean run of the same documents into another collection gives the rows Milvus must hold afterwards.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devstack.processes import celery_argv
from store.rows import chunk_pk
from tests.integration.faultstack import FaultStack, documents, fault_stack, wait_for

POINTS = ["before_batch", "before_upsert", "between_upserts", "before_prune", "before_ledger"]
CRASH_SETTINGS = {
    "TEST_PAUSE_AT": json.dumps(POINTS),
    "TEST_PAUSE_S": "120",
    "MILVUS_WRITE_BATCH": "8",  # a batch of four documents (~14 chunks) takes two upserts
}
Row = tuple[str, int, str, str]  # doc id, chunk index, content hash, text


@contextmanager
def crash_stack(tmp: Path) -> Iterator[FaultStack]:
    """A fault stack with every point disarmed (a test arms the one it needs) and two ingest workers."""
    with fault_stack(tmp, CRASH_SETTINGS) as fs:
        for point in POINTS:
            disarm(fs, point)
        fs.sup.start("ingest-worker-2", celery_argv("ingest", 1, name="ingest2"))
        yield fs


def _files(fs: FaultStack, point: str) -> Path:
    return fs.tmp / "data" / "faultpoints" / point


def disarm(fs: FaultStack, point: str) -> None:
    """Nobody pauses at `point` (its claim exists)."""
    path = _files(fs, point)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".claim").touch()


def arm(fs: FaultStack, point: str) -> None:
    """The next process to reach `point` pauses there."""
    for suffix in (".claim", ".json", ".go", ".tmp"):
        _files(fs, point).with_suffix(suffix).unlink(missing_ok=True)


def paused(fs: FaultStack, point: str, timeout_s: float = 90) -> int:
    """The pid of the process paused at `point`, once one is."""
    path = _files(fs, point).with_suffix(".json")
    wait_for(path.exists, timeout_s, f"a worker to pause at {point}")
    pid = int(json.loads(path.read_text())["pid"])
    assert pid != fs.proc("ingest-worker").pid  # a pool's child, not a worker's main process
    return pid


def release(fs: FaultStack, point: str) -> None:
    """Let the paused process go on."""
    _files(fs, point).with_suffix(".go").touch()


def kill_at(fs: FaultStack, point: str) -> int:
    """Arm `point`, SIGKILL the first process that pauses there, and disarm it for the redelivery."""
    arm(fs, point)
    pid = paused(fs, point)
    os.kill(pid, signal.SIGKILL)
    return pid


def version(prefix: str, count: int, revision: int) -> list[dict[str, Any]]:
    """The documents of `documents()`, rewritten and lengthened `revision` times (more chunks each time)."""
    docs = documents(prefix, count)
    for doc in docs if revision else []:
        doc["text"] = " ".join([f"Revision {revision}."] * revision * 40) + " " + doc["text"]
    return docs


def rows(fs: FaultStack, collection: str) -> set[Row]:
    """What Milvus holds for `collection`; every pk checked against its row and no pk twice."""
    count, found = fs.chunks(collection)
    assert count == len(found) == len({row["pk"] for row in found}), (count, len(found))
    for row in found:
        assert row["pk"] == chunk_pk(collection, row["doc_id"], row["chunk_index"], row["content_hash"])
    return {(row["doc_id"], row["chunk_index"], row["content_hash"], row["text"]) for row in found}


def by_doc(found: set[Row]) -> dict[str, set[Row]]:
    docs: dict[str, set[Row]] = {}
    for row in found:
        docs.setdefault(row[0], set()).add(row)
    return docs


def held(docs: dict[str, set[Row]]) -> dict[str, dict[str, int]]:
    """Per document, its rows per version: what a failed comparison of rows prints."""
    return {
        doc_id: {digest: sum(1 for row in found if row[2] == digest) for digest in {row[2] for row in found}}
        for doc_id, found in sorted(docs.items())
    }


def reference(fs: FaultStack, collection: str, docs: list[dict[str, Any]]) -> dict[str, set[Row]]:
    """Each document's rows after a clean run (no fault) into a collection of its own."""
    job = fs.run("/api/v1/documents", json={"collection": collection, "documents": docs})
    assert job["state"] == "succeeded" and job["result"]["failed"] == 0, job
    return by_doc(rows(fs, collection))


def replace(fs: FaultStack, collection: str, docs: list[dict[str, Any]]) -> str:
    response = fs.post(
        "/api/v1/documents", json={"collection": collection, "documents": docs, "on_duplicate": "replace"}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])
