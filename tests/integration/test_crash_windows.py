"""SIGKILL in every window of an ingest batch's write, a Milvus kill mid-upsert, real lock contention, and
deletes racing ingests: afterwards every document is wholly one version, or absent, never half or twice.

Runs on a stack of its own (`crashpoints`): its workers pause at named points of the write path, so each
kill lands exactly in its window.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from celeryconfig import make_celery
from common.contracts import INGEST_BATCH_TASK, INGEST_QUEUE
from common.fences import Fences
from common.messages import queue_lists
from common.settings import Settings
from devstack.private import FAULT_SETTINGS
from devstack.processes import start_milvus
from ingestion.pipeline import DELETED
from tests.integration.crashpoints import (
    Row,
    arm,
    by_doc,
    crash_stack,
    disarm,
    held,
    kill_at,
    paused,
    reference,
    release,
    replace,
    rows,
    version,
)
from tests.integration.faultstack import FaultStack, wait_for
from workers.fanout import batch_kwargs

V1, V2 = version("d", 8, 0), version("d", 8, 1)  # two batches of four; v2 has more chunks per document


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    with crash_stack(tmp_path_factory.mktemp("crash")) as stack:
        yield stack


@pytest.fixture(scope="module")
def clean(crash: FaultStack) -> dict[int, dict[str, set[Row]]]:
    """Each version's rows per document after a clean run; pks differ per collection, so compare rows."""
    return {1: reference(crash, "ref-v1", V1), 2: reference(crash, "ref-v2", V2)}


def stored_v1(fs: FaultStack, collection: str, clean: dict[int, dict[str, set[Row]]]) -> None:
    job = fs.run("/api/v1/documents", json={"collection": collection, "documents": V1})
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 8, job
    assert by_doc(rows(fs, collection)) == clean[1]


@pytest.mark.parametrize("point", ["before_upsert", "between_upserts", "before_prune", "before_ledger"])
def test_a_replace_killed_in_any_window_ends_exactly_as_a_clean_run(
    crash: FaultStack, clean: dict[int, dict[str, set[Row]]], point: str
) -> None:
    collection = f"w-{point.replace('_', '-')}"
    stored_v1(crash, collection, clean)

    job_id = replace(crash, collection, V2)
    kill_at(crash, point)
    job = crash.wait_job(job_id)

    assert job["state"] == "succeeded" and job["result"]["failed"] == 0, job
    assert job["result"]["succeeded"] + job["result"]["skipped"] == 8
    assert sorted(crash.deliveries(job_id)) == [1, 1, 2]  # coordinator, two batches: one delivered twice
    assert by_doc(rows(crash, collection)) == clean[2]  # every chunk of v2, once; nothing of v1


@pytest.mark.parametrize(("point", "kept"), [("between_upserts", 1), ("before_prune", 2)])
def test_a_replace_that_fails_for_good_leaves_each_document_one_whole_version(
    crash: FaultStack, clean: dict[int, dict[str, set[Row]]], point: str, kept: int
) -> None:
    """One batch killed on every delivery (MAX_DELIVERIES=2) fails, and its documents keep the newest
    version that was whole: v1 when v2 was cut short, v2 when only the prune of v1 was missing."""
    collection = f"f-{point.replace('_', '-')}"
    stored_v1(crash, collection, clean)

    job_id = replace(crash, collection, V2[:4])
    first = kill_at(crash, point)
    second = kill_at(crash, point)  # the redelivery pauses at the same point again
    assert first != second
    disarm(crash, point)
    job = crash.wait_job(job_id)

    assert job["state"] == "failed" and "worker lost" in job["error"], job
    report = crash.get(f"/api/v1/jobs/{job_id}/documents").json()["items"]
    assert [item["status"] for item in report] == ["failed"] * 4, report
    stored = by_doc(rows(crash, collection))
    expected = {doc_id: clean[kept if doc_id < "d-4" else 1][doc_id] for doc_id in clean[1]}
    assert stored == expected


def test_milvus_killed_in_the_middle_of_an_upsert_then_restarted(
    crash: FaultStack, clean: dict[int, dict[str, set[Row]]]
) -> None:
    collection = "milvus-kill"
    stored_v1(crash, collection, clean)

    job_id = replace(crash, collection, V2[:4])  # one batch: no other is caught mid-query by the restart
    arm(crash, "between_upserts")
    paused(crash, "between_upserts")  # the first upsert of a batch went through; the next one is due
    crash.stop("milvus", signal.SIGKILL)
    wait_for(lambda: not crash.milvus_port_open(), 20, "Milvus to die")
    start_milvus(crash.sup, crash.milvus_uri, crash.tmp / "milvus")
    release(crash, "between_upserts")
    job = crash.wait_job(job_id)

    assert job["state"] == "succeeded" and job["result"]["failed"] == 0, job
    expected = {doc_id: clean[2 if doc_id < "d-4" else 1][doc_id] for doc_id in clean[1]}
    assert by_doc(rows(crash, collection)) == expected


def test_a_batch_that_fails_while_milvus_is_away_is_settled_once_milvus_is_back(
    crash: FaultStack, clean: dict[int, dict[str, set[Row]]]
) -> None:
    """v2 is written whole, then Milvus dies before v1's removal and stays away past the batch's retries: the
    batch fails and cannot settle its documents then. Once Milvus is back they end wholly on v2, with no
    later write of them (the chaos test once caught two versions left this way)."""
    collection = "settle-later"
    stored_v1(crash, collection, clean)

    job_id = replace(crash, collection, V2[:4])
    arm(crash, "before_prune")
    paused(crash, "before_prune")
    crash.stop("milvus", signal.SIGKILL)
    wait_for(lambda: not crash.milvus_port_open(), 20, "Milvus to die")
    release(crash, "before_prune")
    job = crash.wait_job(job_id)
    assert job["state"] == "failed" and "Milvus unavailable" in job["error"], job

    start_milvus(crash.sup, crash.milvus_uri, crash.tmp / "milvus")
    expected = {doc_id: clean[2 if doc_id < "d-4" else 1][doc_id] for doc_id in clean[1]}

    def settled() -> bool:
        try:
            return by_doc(rows(crash, collection)) == expected
        except AssertionError:  # the settle's prune landed between the count and the read of `rows`
            return False

    try:
        wait_for(settled, 90, "one whole version each", every_s=1)
    except AssertionError:  # say what is held: which versions of which documents, how many rows each
        assert held(by_doc(rows(crash, collection))) == held(expected)
        raise
    assert by_doc(rows(crash, collection)) == expected  # every check of `rows` once more, nothing in flight
    marks = crash.redis().smembers(Fences.marks_key(collection))
    assert not marks & {f"d-{i}" for i in range(4)}, marks  # settled, so no later write prunes them again


def test_two_ingest_processes_contend_for_the_same_documents(
    crash: FaultStack, clean: dict[int, dict[str, set[Row]]]
) -> None:
    """Job A holds documents d-0..d-3 (paused before its prune) in one worker; job B, over d-2..d-5, runs in
    the other worker and waits for A's locks; when A goes on, B writes after it: d-2 and d-3 end as B's."""
    collection, v3 = "contended", version("d", 8, 2)
    arm(crash, "before_prune")
    a = replace(crash, collection, V2[:4])
    holder = paused(crash, "before_prune")
    b = replace(crash, collection, v3[2:6])
    beat = wait_for(lambda: crash.beats(b), 60, "job B's batch to start")
    assert next(iter(beat.values()))["pid"] != holder  # the other worker: contended across processes
    assert crash.chunks(collection)[0] > 0 and not any(
        doc_id in {"d-4", "d-5"} for doc_id, *_ in rows(crash, collection)
    )  # B waits for all of its locks before it writes anything
    release(crash, "before_prune")
    job_a, job_b = crash.wait_job(a), crash.wait_job(b)
    assert job_a["state"] == job_b["state"] == "succeeded", (job_a, job_b)
    assert job_a["result"]["succeeded"] == job_b["result"]["succeeded"] == 4

    v3_clean = reference(crash, "ref-v3", v3[2:6])
    stored = by_doc(rows(crash, collection))
    assert stored == {**{d: clean[2][d] for d in ("d-0", "d-1")}, **v3_clean}


def test_a_writer_whose_locks_expired_in_a_redis_outage_writes_nothing_more(
    crash: FaultStack, clean: dict[int, dict[str, set[Row]]]
) -> None:
    """Job A holds d-0..d-3 and pauses between its two upserts; Redis is killed and stays away longer than
    the locks' TTL, so they are gone when it is back; job B, accepted later (v3 of d-2..d-5), takes them in
    the other worker and ends. A then goes on: its next upsert and its prune would leave d-2 and d-3 on A's
    older v2, or half of each (the chaos run left a document with 3 of its 6 chunks this way). It must write
    nothing more under the lapsed locks; its retry finds B's newer versions and keeps them."""
    collection, v3 = "lapsed", version("d", 8, 2)
    arm(crash, "between_upserts")
    a = replace(crash, collection, V2[:4])
    paused(crash, "between_upserts")
    crash.stop("redis", signal.SIGKILL)
    time.sleep(float(FAULT_SETTINGS["JOB_HEARTBEAT_TIMEOUT_S"]) + 1)  # the outage: longer than the locks' TTL
    crash.restart_redis()
    b = replace(crash, collection, v3[2:6])
    job_b = crash.wait_job(b)
    assert job_b["state"] == "succeeded" and job_b["result"]["succeeded"] == 4, job_b
    assert by_doc(rows(crash, collection))["d-5"]  # B wrote while A was still paused in the other worker
    release(crash, "between_upserts")
    job_a = crash.wait_job(a)

    assert job_a["state"] == "succeeded" and job_a["result"]["failed"] == 0, job_a
    v3_clean = reference(crash, "ref-v3-lapsed", v3[2:6])
    stored = by_doc(rows(crash, collection))
    expected = {**{d: clean[2][d] for d in ("d-0", "d-1")}, **v3_clean}
    assert held(stored) == held(expected)
    assert stored == expected


def test_a_collection_delete_waits_for_a_write_under_way_and_wins(crash: FaultStack) -> None:
    collection = "race-inflight"
    arm(crash, "before_upsert")
    ingest = crash.submit(collection, V1[:4])
    paused(crash, "before_upsert")  # holding its documents and its place as a writer of the collection
    deleted = crash.delete(f"/api/v1/collections/{collection}")
    assert deleted.status_code == 202, deleted.text
    delete_job = deleted.json()["job_id"]
    running = lambda: crash.get(f"/api/v1/jobs/{delete_job}").json()["state"] == "running"  # noqa: E731
    wait_for(running, 30, "the delete to start in the other worker")
    held = crash.get(f"/api/v1/jobs/{delete_job}", params={"wait": 30}).json()  # returns early if it ends
    assert held["state"] == "running", held  # it waits for the write under way, however long
    release(crash, "before_upsert")

    assert crash.wait_job(ingest)["state"] == "succeeded"
    assert crash.wait_job(delete_job)["state"] == "succeeded"
    assert crash.chunks(collection) == (0, [])  # the write landed before the delete, not after it


def test_an_upload_accepted_before_a_delete_but_run_after_it_writes_nothing(crash: FaultStack) -> None:
    collection = "race-queued"
    first = crash.run("/api/v1/documents", json={"collection": collection, "documents": V1[:2]})
    assert first["state"] == "succeeded"
    arm(crash, "before_batch")
    late = crash.submit(collection, V1[2:4])  # accepted before the delete ...
    paused(crash, "before_batch")
    deleted = crash.delete(f"/api/v1/collections/{collection}")
    assert deleted.status_code == 202
    assert crash.wait_job(deleted.json()["job_id"])["state"] == "succeeded"  # ... run after it
    release(crash, "before_batch")

    job = crash.wait_job(late)
    assert job["state"] == "failed" and DELETED in job["error"], job
    assert crash.chunks(collection) == (0, [])

    after = crash.run("/api/v1/documents", json={"collection": collection, "documents": V1[:1]})
    assert after["state"] == "succeeded" and after["result"]["succeeded"] == 1  # accepted after: it stays
    assert {doc_id for doc_id, *_ in rows(crash, collection)} == {"d-0"}


def test_a_document_delete_wins_over_an_earlier_upload_of_it_whichever_runs_first(crash: FaultStack) -> None:
    collection = "doc-race"
    stored = crash.run("/api/v1/documents", json={"collection": collection, "documents": V1[:2]})
    assert stored["state"] == "succeeded"
    arm(crash, "before_batch")
    late = replace(crash, collection, V2[:2])  # accepted before the delete of d-0, run after it
    paused(crash, "before_batch")
    deleted = crash.delete(f"/api/v1/collections/{collection}/documents/d-0")
    assert deleted.status_code == 202
    assert crash.wait_job(deleted.json()["job_id"])["state"] == "succeeded"
    release(crash, "before_batch")

    job = crash.wait_job(late)
    assert job["state"] == "succeeded" and job["result"]["failed"] == 1, job
    assert {doc_id for doc_id, *_ in rows(crash, collection)} == {"d-1"}  # d-0 stays deleted


def test_a_second_copy_of_a_running_batch_waits_for_it_so_a_later_delete_still_wins(
    crash: FaultStack, clean: dict[int, dict[str, set[Row]]]
) -> None:
    """A batch's message can be delivered twice while its first delivery runs (the broker restores it past
    its visibility timeout; the reconciler sends it again). Both copies lock the documents under the batch's
    name, so without the batch's lease the copy would share the locks and release them on its way out while
    the first still writes: a delete accepted later would run in between, and the first's write would then
    bring back the deleted document."""
    collection, docs = "dup-copy", ("d-0", "d-1", "d-2", "d-3")
    stored = crash.run("/api/v1/documents", json={"collection": collection, "documents": V1[:4]})
    assert stored["state"] == "succeeded", stored
    arm(crash, "before_upsert")
    job_id = replace(crash, collection, V2[:4])  # one batch
    paused(crash, "before_upsert")  # holding d-0..d-3, in one of the two ingest workers

    request = json.loads(crash.redis().hget(f"quarry:job:{job_id}", "request"))
    make_celery(Settings(redis_url=crash.redis_url)).send_task(
        INGEST_BATCH_TASK, kwargs=batch_kwargs(job_id, 0, request)
    )
    queued = lambda: sum(crash.redis().llen(name) for name in queue_lists(INGEST_QUEUE))  # noqa: E731
    wait_for(lambda: queued() == 0, 30, "the copy to be taken by the other worker")
    deleted = crash.delete(f"/api/v1/collections/{collection}/documents/d-0")
    assert deleted.status_code == 202, deleted.text
    delete_job = deleted.json()["job_id"]
    held = crash.get(f"/api/v1/jobs/{delete_job}", params={"wait": 15}).json()  # returns early if it ends
    assert held["state"] == "queued", held  # the copy waits for the first delivery, so both workers are busy
    assert by_doc(rows(crash, collection)) == {d: clean[1][d] for d in docs}  # and it wrote nothing
    release(crash, "before_upsert")

    job = crash.wait_job(job_id)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 4, job
    assert crash.wait_job(delete_job)["state"] == "succeeded"
    assert by_doc(rows(crash, collection)) == {d: clean[2][d] for d in docs[1:]}
    assert crash.deliveries(job_id) == [1, 1]  # the copy found the job ended once it had the lease
