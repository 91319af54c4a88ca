"""GET /metrics on the live stack: the API's requests (both gunicorn workers), the workers' tasks and
stages (through Redis) and the broker's queues, after one ingest and one question."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from common.contracts import ASK_TASK, INGEST_BATCH_TASK, INGEST_TASK
from common.job_schema import QUEUED_INDEX, RUNNING_INDEX, JobKeys
from common.jobs import JobStore
from common.messages import SENT_HEADER
from common.settings import Settings
from tests.integration.conftest import Stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
COLLECTION = "prom-metrics"
DOCUMENTS = [
    {"id": "kiln", "title": "Kilns", "text": "A kiln is a thermally insulated chamber used to fire pottery."},
    {"id": "loom", "title": "Looms", "text": "A loom is a device used to weave cloth and tapestry."},
    {
        "id": "lathe",
        "title": "Lathes",
        "text": "A lathe rotates a workpiece about an axis to cut or shape it.",
    },
]
HEALTH_CHECKS = 8
QUEUE_REDIS_URL = "redis://127.0.0.1:6379/12"  # its own database: nothing consumes these messages


def scrape(stack: Stack) -> Samples:
    """Like Prometheus: no API key."""
    response = requests.get(stack.url + "/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= set(got))


def eventually(stack: Stack, ready: Callable[[Samples], bool], timeout_s: float = 60) -> Samples:
    """A task's metrics are written when it returns, just after it ends its job: scrape until they land."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(stack)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


@pytest.fixture(scope="module")
def samples(stack: Stack) -> Samples:
    ingest = stack.run("/api/v1/documents", json={"documents": DOCUMENTS, "collection": COLLECTION})
    assert ingest["state"] == "succeeded", ingest
    ask = stack.run("/api/v1/ask", json={"question": "where is pottery fired?", "collection": COLLECTION})
    assert ask["state"] == "succeeded", ask
    assert ask["result"]["passages"][0]["doc_id"] == "kiln"
    for _ in range(HEALTH_CHECKS):
        assert requests.get(stack.url + "/healthz", timeout=30).status_code == 200
    return eventually(
        stack,
        lambda s: all(
            value(s, "quarry_tasks_total", kind=kind, outcome="succeeded") >= 1
            for kind in ("ingest", "ingest_batch", "ask")
        ),
    )


def test_api_requests_by_route_template_and_status(samples: Samples) -> None:
    requests_total = "quarry_http_requests_total"
    assert value(samples, requests_total, method="POST", route="/api/v1/documents", status="202") >= 1
    assert value(samples, requests_total, method="POST", route="/api/v1/ask", status="202") >= 1
    assert value(samples, requests_total, method="GET", route="/api/v1/jobs/<job_id>", status="200") >= 2
    # Both gunicorn workers answer requests: only the multiprocess files add up to every health check.
    assert value(samples, requests_total, route="/healthz", status="200") >= HEALTH_CHECKS
    latency = "quarry_http_request_duration_seconds_count"
    assert value(samples, latency, route="/api/v1/jobs/<job_id>") >= 2
    routes = {dict(labels).get("route") for name, labels in samples if name == requests_total}
    assert all(route == "unmatched" or route.startswith("/") for route in routes if route)
    assert not any(len(part) == 32 for route in routes if route for part in route.split("/"))  # no job id


def test_the_api_workers_share_a_metrics_directory(stack: Stack, samples: Samples) -> None:
    directory = stack.logs.parent / "data" / "prometheus"
    kinds = {path.name.split("_")[0] for path in directory.glob("*.db")}
    assert {"counter", "histogram"} <= kinds, directory


def test_worker_tasks_by_kind_and_outcome(samples: Samples) -> None:
    assert value(samples, "quarry_fleet_metrics_up") == 1
    for kind in ("ingest", "ingest_batch", "ask"):
        assert value(samples, "quarry_tasks_total", kind=kind, outcome="succeeded") >= 1, kind
        assert value(samples, "quarry_task_duration_seconds_count", kind=kind) >= 1, kind
        assert value(samples, "quarry_task_duration_seconds_sum", kind=kind) > 0, kind
        buckets = value(samples, "quarry_task_duration_seconds_bucket", kind=kind, le="+Inf")
        assert buckets == value(samples, "quarry_task_duration_seconds_count", kind=kind)
    for kind in ("ingest", "ask"):  # jobs, not tasks: an ingest's batches are no jobs of their own
        assert value(samples, "quarry_jobs_ended_total", kind=kind, state="succeeded") >= 1, kind
    assert value(samples, "quarry_jobs_ended_total", kind="ingest_batch") == 0


@pytest.mark.parametrize(
    ("pipeline", "stage"),
    [
        ("ingest", "parse"),
        ("ingest", "chunk"),
        ("ingest", "embed"),
        ("ingest", "write"),
        ("ingest", "flush"),
        ("ask", "embed"),
        ("ask", "search"),
        ("ask", "rerank"),
    ],
)
def test_stage_durations(samples: Samples, pipeline: str, stage: str) -> None:
    labels: dict[str, Any] = {"pipeline": pipeline, "stage": stage}
    assert value(samples, "quarry_stage_duration_seconds_count", **labels) >= 1
    assert value(samples, "quarry_stage_duration_seconds_sum", **labels) > 0


def test_batch_sizes(samples: Samples) -> None:
    assert value(samples, "quarry_batch_size_count", batch="questions") >= 1
    assert value(samples, "quarry_batch_size_sum", batch="questions") >= 1
    assert value(samples, "quarry_batch_size_sum", batch="documents") >= len(DOCUMENTS)
    assert value(samples, "quarry_batch_size_sum", batch="chunks") >= len(DOCUMENTS)


def queue_depths(samples: Samples) -> dict[str, float]:
    return {dict(labels)["queue"]: v for (name, labels), v in samples.items() if name == "quarry_queue_depth"}


def test_queue_depths_of_every_queue(samples: Samples) -> None:
    assert queue_depths(samples).keys() == {"parse", "ingest", "ask", "webhooks"}


def test_queue_depths_count_the_messages_waiting(tmp_path: Path) -> None:
    """An API on a Redis database no worker consumes: the gauge is exactly what waits in each queue."""
    settings = Settings(redis_url=QUEUE_REDIS_URL, data_dir=tmp_path, queue_depth_cache_s=0)
    client = redis.Redis.from_url(QUEUE_REDIS_URL)
    client.flushdb()
    try:
        app = create_app(settings)
        celery = app.extensions["quarry"].celery
        for task, count in ((ASK_TASK, 3), (INGEST_TASK, 2), (INGEST_BATCH_TASK, 1)):
            for _ in range(count):
                celery.send_task(task, kwargs={})
        response = app.test_client().get("/metrics")
        parsed = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples
        }
        assert queue_depths(parsed) == {"ask": 3, "parse": 2, "ingest": 1, "webhooks": 0}

        oldest = json.loads(client.lindex("ask", -1))  # the first sent: made 100 s old
        oldest["headers"][SENT_HEADER] -= 100
        client.lset("ask", -1, json.dumps(oldest))
        ages = {
            dict(labels)["queue"]: v
            for (name, labels), v in _parsed(app.test_client()).items()
            if name == "quarry_oldest_message_age_seconds"
        }
        assert ages.keys() == {"ask", "parse", "ingest", "webhooks"}
        assert 100 <= ages["ask"] < 160 and 0 < ages["parse"] < 60 and 0 < ages["ingest"] < 60
        assert ages["webhooks"] == 0  # nothing waits
    finally:
        client.flushdb()


def test_queued_jobs_and_the_age_of_the_oldest_by_kind(tmp_path: Path) -> None:
    """Jobs submitted through the API to a Redis database no worker consumes: counted while queued, and
    the oldest one's age is its message's (made 100 s old here, rather than waiting for it)."""
    settings = Settings(redis_url=QUEUE_REDIS_URL, data_dir=tmp_path, queue_depth_cache_s=0)
    client = redis.Redis.from_url(QUEUE_REDIS_URL)
    client.flushdb()
    try:
        web = create_app(settings).test_client()
        asks = [web.post("/api/v1/ask", json={"question": f"why {i}?"}) for i in range(2)]
        ingest = web.post(
            "/api/v1/documents", json={"documents": [{"id": "q", "text": "Queued, never run."}]}
        )
        assert [r.status_code for r in (*asks, ingest)] == [202, 202, 202], [r.get_json() for r in asks]
        oldest = JobKeys(asks[0].get_json()["job_id"]).record
        client.zadd(QUEUED_INDEX, {oldest: time.time() - 100})
        parsed = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(web.get("/metrics").get_data(as_text=True))
            for s in family.samples
        }
        assert parsed[("quarry_jobs_queued", (("kind", "ask"),))] == 2
        assert parsed[("quarry_jobs_queued", (("kind", "ingest"),))] == 1
        assert 100 <= parsed[("quarry_oldest_queued_job_age_seconds", (("kind", "ask"),))] < 160
        assert parsed[("quarry_oldest_queued_job_age_seconds", (("kind", "ingest"),))] < 60
    finally:
        client.flushdb()


def _parsed(web: Any) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(web.get("/metrics").get_data(as_text=True))
        for s in family.samples
    }


def test_running_jobs_and_ended_jobs_by_kind_and_state(tmp_path: Path) -> None:
    """Jobs moved through their states as a worker and a client would: running ones are counted while they
    run (with the longest one's age), each end once by kind and state, a repeated end not at all."""
    settings = Settings(redis_url=QUEUE_REDIS_URL, data_dir=tmp_path, queue_depth_cache_s=0)
    client = redis.Redis.from_url(QUEUE_REDIS_URL)
    client.flushdb()
    try:
        web = create_app(settings).test_client()
        ids = [web.post("/api/v1/ask", json={"question": f"why {i}?"}).get_json()["job_id"] for i in range(3)]
        jobs = JobStore(client, ttl_s=600)
        assert jobs.mark_running(ids[0]) and jobs.mark_running(ids[1])
        client.zadd(RUNNING_INDEX, {JobKeys(ids[0]).record: time.time() - 50})
        assert web.delete(f"/api/v1/jobs/{ids[2]}").status_code == 200
        parsed = _parsed(web)
        assert parsed[("quarry_jobs_running", (("kind", "ask"),))] == 2
        assert 50 <= parsed[("quarry_longest_running_job_seconds", (("kind", "ask"),))] < 110
        assert ("quarry_jobs_queued", (("kind", "ask"),)) not in parsed
        assert parsed[("quarry_jobs_ended_total", (("kind", "ask"), ("state", "cancelled")))] == 1

        jobs.mark_succeeded(ids[0], {"passages": []})
        jobs.mark_failed(ids[1], "boom")
        jobs.mark_failed(ids[0], "a late redelivery")  # the job ended already: neither moved nor counted
        parsed = _parsed(web)
        assert ("quarry_jobs_running", (("kind", "ask"),)) not in parsed
        assert client.zcard(RUNNING_INDEX) == 0
        ended = {
            dict(labels)["state"]: v for (n, labels), v in parsed.items() if n == "quarry_jobs_ended_total"
        }
        assert ended == {"cancelled": 1, "succeeded": 1, "failed": 1}
    finally:
        client.flushdb()
