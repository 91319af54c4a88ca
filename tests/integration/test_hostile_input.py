"""Hostile input on the real stack: one bad item fails alone, and nothing a client sends is unbounded.

Every test asserts the state that matters (each document's outcome and reason, what search finds, what is
left in Redis and on disk), not only a status code.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from celeryconfig import make_celery
from common.contracts import ASK_TASK, DELETE_TASK, INGEST_BATCH_TASK
from common.job_schema import KEY_PREFIX
from common.jobs import JobStore
from common.retention import DUE_KEY
from common.settings import Settings
from tests.integration.conftest import LIMITS_ENV, Stack


def jsonl(*records: Any) -> bytes:
    """JSON lines as a client would write them (json.dumps escapes a lone surrogate as \\udXXX)."""
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def outcomes(stack: Stack, job_id: str) -> dict[str, dict[str, Any]]:
    page = stack.get(f"/api/v1/jobs/{job_id}/documents", params={"limit": 1000}).json()
    return {item["doc_id"]: item for item in page["items"]}


GOOD = {
    "good-1": "Lighthouses focus their beams with Fresnel lenses made of concentric glass rings.",
    "good-2": "Sourdough bread rises because wild yeast and lactobacilli ferment the dough.",
    "good-3": "Basalt columns form when thick lava flows cool slowly and contract.",
}
DEEP: Any = 1
for _ in range(20):
    DEEP = {"k": DEEP}
BAD = [  # (record, report id, words the reason must hold)
    ({"id": "bad\u0001id", "text": "an id Milvus cannot filter on"}, "bad\u0001id", "control character"),
    ({"id": "x" * 600, "text": "an id longer than the store holds"}, "x" * 500, "at most 512 bytes"),
    ({"id": "long-title", "title": "T" * 3000, "text": "a title too long"}, "long-title", "title"),
    ({"id": "surrogate-text", "text": "lone \ud800 surrogate"}, "surrogate-text", "surrogate"),
    ({"id": "\udc00", "text": "an id that is not Unicode"}, "\\udc00", "surrogate"),
    ({"id": "big-meta", "text": "metadata too big", "metadata": {"blob": "x" * 20_000}}, "big-meta", "bytes"),
    ({"id": "deep-meta", "text": "metadata too deep", "metadata": DEEP}, "deep-meta", "nested"),
    ({"id": "good-1", "text": "the same id again, in the same file"}, "good-1 (copy 2)", "duplicate"),
]


@pytest.fixture(scope="module")
def mixed(stack: Stack) -> dict[str, Any]:
    """One upload of two files: good records among every kind of bad one, and ids repeated across files."""
    first = jsonl(
        {"id": "good-1", "text": GOOD["good-1"]},
        *(record for record, _, _ in BAD),
        b"[" * 5000 + b"]" * 5000,  # a line nested deeper than the decoder's stack
        {"id": "one-word", "text": "a" * 70_000 + " and then some ordinary words at the end"},
        {"id": "good-2", "text": GOOD["good-2"]},
    )
    second = jsonl(
        {"id": "good-2", "text": "another file, the same id"}, {"id": "good-3", "text": GOOD["good-3"]}
    )
    files = [("files", ("first.jsonl", first)), ("files", ("second.jsonl", second))]
    job = stack.run("/api/v1/documents", files=files, data={"collection": "hostile"})
    return {"job": job, "outcomes": outcomes(stack, job["job_id"])}


def test_bad_records_fail_alone_with_their_own_reason(mixed: dict[str, Any]) -> None:
    job, found = mixed["job"], mixed["outcomes"]
    assert job["state"] == "succeeded", job
    for doc_id in [*GOOD, "one-word"]:
        assert found[doc_id]["status"] == "succeeded" and found[doc_id]["chunks"] >= 1, found[doc_id]
    for _, report_id, words in BAD:
        (outcome,) = [item for key, item in found.items() if key.startswith(report_id)]
        assert outcome["status"] == "failed" and words in outcome["reason"], outcome
    assert found["first.jsonl#line10"]["status"] == "failed"
    assert "nested too deeply" in found["first.jsonl#line10"]["reason"]
    assert found["good-2 (copy 2)"]["status"] == "failed"  # the second file's good-2: reported, not written
    assert job["progress"]["succeeded"] == 4 and job["progress"]["failed"] == len(BAD) + 2
    assert len(found) == job["progress"]["total"] == 4 + len(BAD) + 2  # no outcome hides another


def test_good_records_of_a_mixed_upload_are_searchable_as_sent(stack: Stack, mixed: dict[str, Any]) -> None:
    for doc_id, text in GOOD.items():
        document = stack.get(f"/api/v1/collections/hostile/documents/{doc_id}").json()
        assert document["chunks"][0]["text"] == text  # the first copy, not the second file's
    answer = stack.run("/api/v1/ask", json={"question": "Fresnel lens", "collection": "hostile"})
    assert answer["result"]["passages"][0]["doc_id"] == "good-1"
    word = stack.get("/api/v1/collections/hostile/documents/one-word").json()
    assert len(word["chunks"]) >= 2  # 70,000 characters in one token: cut to what a stored chunk holds
    assert all(len(chunk["text"].encode()) <= 65_535 for chunk in word["chunks"])


def test_a_page_of_reports_reads_only_its_own_slice(stack: Stack, mixed: dict[str, Any]) -> None:
    """Paged by status with LRANGE + HMGET of the page's ids: never the whole job's reports."""
    job_id = mixed["job"]["job_id"]
    client = redis.Redis.from_url(stack.redis_url)
    commands: list[str] = []
    sentinel = f"end-{uuid.uuid4().hex}"

    def watch() -> None:
        with client.monitor() as monitor:
            for event in monitor.listen():
                commands.append(event["command"])
                if sentinel in event["command"]:
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)  # MONITOR has no "subscribed" event to wait for; the page below is what is checked
    page = stack.get(f"/api/v1/jobs/{job_id}/documents", params={"status": "failed", "limit": 2, "offset": 1})
    redis.Redis.from_url(stack.redis_url).echo(sentinel)
    watcher.join(10)
    body = page.json()
    assert body["total"] == len(BAD) + 2 and len(body["items"]) == 2 and body["next_offset"] == 3
    assert all(item["status"] == "failed" for item in body["items"])
    touching = [command for command in commands if f"{job_id}:docs" in command]
    assert touching and all(command.startswith("HMGET") for command in touching), touching
    assert all(len(command.split(" ")) <= 4 for command in touching)  # HMGET key id id: two fields


def test_a_malformed_question_never_fails_another_tenants_question_in_its_batch(stack: Stack) -> None:
    """Sent straight to the broker (the API refuses it with 400): defence in depth in the micro-batcher."""
    settings = Settings(redis_url=stack.redis_url)
    celery, jobs = make_celery(settings), JobStore(redis.Redis.from_url(stack.redis_url), 3600)
    for _ in range(5):  # until both land in one micro-batch (the result says how many shared it)
        ids = {"bad": uuid.uuid4().hex, "good": uuid.uuid4().hex}
        asks = {
            "bad": {"question": "lone \ud800 surrogate", "collection": "hostile", "top_k": 3},
            "good": {"question": "Fresnel lens", "collection": "hostile", "top_k": 3},
        }
        for name in ("bad", "good"):
            jobs.create(ids[name], "ask", 1, asks[name], owner="main")
        for name in ("bad", "good"):
            celery.send_task(ASK_TASK, kwargs=asks[name], task_id=ids[name])
        good, bad = stack.wait_job(ids["good"]), stack.wait_job(ids["bad"])
        assert bad["state"] == "failed" and "TypeError" in bad["error"], bad
        assert good["state"] == "succeeded", good
        assert good["result"]["passages"][0]["doc_id"] == "good-1"
        if good["result"]["timings"]["batch_size"] == 2:
            return
    pytest.fail("the two questions never shared a micro-batch")


def test_a_message_of_the_wrong_shape_fails_its_job_by_name_and_is_not_retried(stack: Stack) -> None:
    """Sent straight to the broker (the API builds only valid payloads): each task checks its payload on
    arrival against its contract (`common.contracts`), so the job fails at once with the field named."""
    settings = Settings(redis_url=stack.redis_url)
    celery, jobs = make_celery(settings), JobStore(redis.Redis.from_url(stack.redis_url), 3600)
    messages = {
        ASK_TASK: {"question": "q", "collection": "hostile", "top_k": 0},
        DELETE_TASK: {"collection": "hostile", "doc_ids": "d-1", "seq": 1},  # a string, not a list of ids
    }
    ids = {task: uuid.uuid4().hex for task in messages}
    for task, kwargs in messages.items():
        jobs.create(ids[task], "ask" if task == ASK_TASK else "delete", 1, kwargs, owner="main")
        celery.send_task(task, kwargs=kwargs, task_id=ids[task])
    for task, field in ((ASK_TASK, "top_k"), (DELETE_TASK, "doc_ids")):
        job = stack.wait_job(ids[task])
        assert job["state"] == "failed", job
        assert job["error"].startswith(f"{task}: malformed task payload ({field}"), job  # no retry


def test_a_batch_message_of_the_wrong_shape_is_refused_by_name_and_holds_nothing(stack: Stack) -> None:
    """A batch's hooks read its payload as its contract does: a malformed one is refused by name (before,
    its hooks took a lease named after the bad index and the batch was dropped without a word)."""
    celery, client = make_celery(Settings(redis_url=stack.redis_url)), redis.Redis.from_url(stack.redis_url)
    job_id, task_id = uuid.uuid4().hex, uuid.uuid4().hex
    kwargs = {"job_id": job_id, "index": "first", "path": "/nowhere/batch.jsonl", "collection": "hostile"}
    celery.send_task(INGEST_BATCH_TASK, kwargs=kwargs, task_id=task_id)
    log = stack.logs / "ingest-worker.log"
    deadline = time.monotonic() + 60
    while f"batch message {task_id} refused" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the malformed batch was not refused"
        time.sleep(0.1)
    line = next(x for x in log.read_text(errors="replace").splitlines() if f"message {task_id} refused" in x)
    assert "malformed task payload (index" in line, line
    assert list(client.scan_iter(match=f"{KEY_PREFIX}{job_id}*")) == []  # no lease, no record made up
    ok = stack.run(
        "/api/v1/documents", json={"collection": "hostile", "documents": [{"id": "after", "text": "x"}]}
    )
    assert ok["state"] == "succeeded", ok


def test_an_upload_over_the_document_limit_fails_before_anything_is_written(stack: Stack) -> None:
    limit = int(LIMITS_ENV["MAX_DOCUMENTS_PER_JOB"])
    records = jsonl(*({"text": f"word{i}"} for i in range(limit + 1)))
    job = stack.run(
        "/api/v1/documents", files=[("files", ("many.jsonl", records))], data={"collection": "many"}
    )
    assert job["state"] == "failed" and f"more than {limit} documents" in job["error"], job
    assert stack.get(f"/api/v1/jobs/{job['job_id']}/documents").json()["total"] == 0  # no report per record
    assert not (stack.uploads / job["job_id"] / "batches").exists()
    assert stack.get("/api/v1/collections/many").json()["documents"] == 0


def test_exact_search_refuses_a_collection_beyond_its_memory_bound(stack: Stack) -> None:
    limit = int(LIMITS_ENV["EXACT_MAX_CHUNKS"])
    docs = [{"id": f"e{i}", "text": f"Exact search reference number {i}."} for i in range(limit + 5)]
    stack.run("/api/v1/documents", json={"collection": "exact-bound", "documents": docs})
    body = {
        "question": "reference",
        "collection": "exact-bound",
        "mode": "dense",
        "exact": True,
        "rerank": False,
    }
    job = stack.run("/api/v1/ask", json=body)
    assert job["state"] == "failed" and f"at most {limit} chunks" in job["error"], job
    hnsw = stack.run("/api/v1/ask", json={**body, "exact": False})
    assert hnsw["state"] == "succeeded" and hnsw["result"]["passages"]


def scheduled(client: redis.Redis, name: str, timeout_s: float = 30) -> float:
    """When the upload directory `name` is due for deletion, once its job's end has scheduled it."""
    deadline = time.monotonic() + timeout_s
    while (due := client.zscore(DUE_KEY, name)) is None:
        assert time.monotonic() < deadline, f"{name} was never scheduled for deletion"
        time.sleep(0.05)
    return float(due)


def test_an_upload_is_deleted_after_its_retention_and_a_retry_then_says_so(stack: Stack) -> None:
    files = [
        ("files", ("kept.txt", b"Retention keeps an upload for retries, then deletes it.")),
        ("files", ("broken.pdf", b"%PDF-1.4 not really a pdf")),
    ]
    job = stack.run("/api/v1/documents", files=files, data={"collection": "retention"})
    assert job["progress"]["failed"] == 1 and (stack.uploads / job["job_id"]).is_dir()
    client = redis.Redis.from_url(stack.redis_url)
    retention = float(LIMITS_ENV["UPLOAD_RETENTION_S"])
    due = scheduled(client, job["job_id"])  # the end is published first, then scheduled: wait for it
    assert abs(due - (time.time() + retention)) < 120
    retry = stack.run(f"/api/v1/jobs/{job['job_id']}/retry")
    assert retry["progress"]["total"] == 1
    scheduled(client, retry["job_id"])
    assert scheduled(client, job["job_id"]) >= due  # the retry's end scheduled the upload it read again
    for name in (job["job_id"], retry["job_id"]):
        client.zadd(DUE_KEY, {name: 0})  # due now
    deadline = time.monotonic() + 30
    while (stack.uploads / job["job_id"]).exists() or (stack.uploads / retry["job_id"]).exists():
        assert time.monotonic() < deadline, "the sweeper did not delete the uploads"
        time.sleep(0.2)
    assert client.zscore(DUE_KEY, job["job_id"]) is None
    response = stack.post(f"/api/v1/jobs/{job['job_id']}/retry")
    assert response.status_code == 409 and "deleted" in response.json()["detail"]
    assert response.headers["Content-Type"] == "application/problem+json"


def test_line_separators_inside_a_document_keep_its_batch_whole(stack: Stack) -> None:
    """U+2028, U+2029 and U+0085 are valid text that JSON carries unescaped: a batch file read with
    str.splitlines cut the document's line in two, and every document of its batch failed."""
    docs = [
        {"id": "sep-before", "text": "Plain text before the odd one."},
        {"id": "sep-odd", "title": "Lines\u2028apart", "text": "before\u2028middle\u2029after\x85end of it"},
        {"id": "sep-after", "text": "Plain text after the odd one."},
    ]
    job = stack.run("/api/v1/documents", json={"collection": "hostile-separators", "documents": docs})
    assert job["state"] == "succeeded" and job["progress"]["succeeded"] == 3, job
    stored = stack.get("/api/v1/collections/hostile-separators/documents/sep-odd").json()
    assert stored["title"] == "Lines\u2028apart" and "\u2029after" in stored["chunks"][0]["text"], stored
