"""Prometheus metrics: the Redis-backed fleet recorder and collector, the worker hooks, the API's /metrics."""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import Ignore
from flask import Flask
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from api.metrics import QueueCollector
from common import metrics
from common.errors import ServiceUnavailable
from common.job_record import JobCancelled
from common.settings import Settings
from workers import metrics as worker_metrics

DOWN = "redis://127.0.0.1:1/0"  # nothing listens: every Redis and broker call fails at once


class FakeRedis:
    """The hash commands RedisMetrics uses, in a pipeline, with Redis's bytes-in-bytes-out replies."""

    def __init__(self, fail: bool = False) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = defaultdict(dict)
        self.fail = fail
        self.executed = 0

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, server: FakeRedis) -> None:
        self.server, self.ops = server, list[tuple[str, str, str, float]]()

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.ops.append(("add", key, field, amount))

    def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
        self.ops.append(("add", key, field, amount))

    def hgetall(self, key: str) -> None:
        self.ops.append(("get", key, "", 0))

    def execute(self) -> list[Any]:
        self.server.executed += 1
        if self.server.fail:
            raise redis.ConnectionError("Redis is down")
        replies: list[Any] = []
        for op, key, field, amount in self.ops:
            table = self.server.hashes[key]
            if op == "get":
                replies.append(dict(table))
                continue
            table[field.encode()] = str(float(table.get(field.encode(), b"0")) + amount).encode()
            replies.append(None)
        return replies


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def expose(fleet: metrics.RedisMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(metrics.FleetCollector(fleet))
    return samples(generate_latest(registry).decode())


# --- the fleet recorder and collector ---


def test_counters_and_histograms_round_trip_through_redis() -> None:
    fleet = metrics.RedisMetrics(FakeRedis())  # type: ignore[arg-type]
    assert fleet.record(
        [
            metrics.Observation(metrics.TASKS, ("ask", "succeeded")),
            metrics.Observation(metrics.TASKS, ("ask", "succeeded")),
            metrics.Observation(metrics.TASKS, ("ingest", "failed")),
            metrics.stage("ask", "search", 0.004),
            metrics.stage("ask", "search", 0.005),  # on a bound: `le` includes it
            metrics.stage("ask", "search", 7200.0),  # past the last bound: only +Inf
            metrics.batch("questions", 3),
        ]
    )
    got = expose(fleet)
    assert got["quarry_tasks_total", (("kind", "ask"), ("outcome", "succeeded"))] == 2
    assert got["quarry_tasks_total", (("kind", "ingest"), ("outcome", "failed"))] == 1
    search = (("pipeline", "ask"), ("stage", "search"))
    bucket = lambda le: got["quarry_stage_duration_seconds_bucket", (("le", le), *search)]  # noqa: E731
    assert (bucket("0.0025"), bucket("0.005"), bucket("60.0"), bucket("+Inf")) == (0, 2, 2, 3)
    assert got["quarry_stage_duration_seconds_count", search] == 3
    assert got["quarry_stage_duration_seconds_sum", search] == pytest.approx(7200.009)
    assert got["quarry_batch_size_bucket", (("batch", "questions"), ("le", "2.0"))] == 0
    assert got["quarry_batch_size_bucket", (("batch", "questions"), ("le", "4.0"))] == 1
    assert got["quarry_fleet_metrics_up", ()] == 1


def test_one_transaction_per_group_and_none_for_an_empty_one() -> None:
    server = FakeRedis()
    fleet = metrics.RedisMetrics(server)  # type: ignore[arg-type]
    fleet.record([metrics.batch("documents", 64), metrics.stage("ingest", "embed", 1.5)])
    fleet.record([])
    assert server.executed == 1


def test_a_failed_write_never_raises_and_pauses_the_next_ones() -> None:
    server = FakeRedis(fail=True)
    fleet = metrics.RedisMetrics(server, pause_s=60)  # type: ignore[arg-type]
    assert fleet.record([metrics.batch("questions", 1)]) is False
    assert fleet.record([metrics.batch("questions", 1)]) is False
    assert server.executed == 1  # the second write did not even try: no timeout per task in an outage


def test_unreadable_redis_says_so_instead_of_failing_the_scrape() -> None:
    got = expose(metrics.RedisMetrics(FakeRedis(fail=True)))  # type: ignore[arg-type]
    assert got == {("quarry_fleet_metrics_up", ()): 0}


def test_labels_must_match_the_spec() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        metrics.Observation(metrics.TASKS, ("ask",))


# --- emitting from pipeline code ---


@pytest.fixture
def captured() -> Iterator[list[metrics.Observation]]:
    seen: list[metrics.Observation] = []
    metrics.install(seen.extend)
    yield seen
    metrics.install(None)


def test_without_a_sink_nothing_is_emitted() -> None:
    metrics.emit(metrics.batch("questions", 1))  # the API and the benchmark: a no-op


def test_timed_emits_the_stage_also_when_the_block_raises(captured: list[metrics.Observation]) -> None:
    with pytest.raises(RuntimeError), metrics.timed("ingest", "write"):
        raise RuntimeError("Milvus refused")
    assert [(o.spec, o.labels) for o in captured] == [(metrics.STAGE_SECONDS, ("ingest", "write"))]
    assert captured[0].value >= 0


def test_a_failing_sink_never_reaches_the_caller() -> None:
    def broken(observations: Sequence[metrics.Observation]) -> None:
        raise OSError("disk full")

    metrics.install(broken)
    try:
        metrics.emit(metrics.batch("chunks", 10))
    finally:
        metrics.install(None)


def test_stage_timings_come_from_a_results_timings() -> None:
    obs = metrics.stage_timings("ask", {"batch_size": 4, "embed_ms": 12.5, "search_ms": 3.0})
    assert [(o.labels, o.value) for o in obs] == [(("ask", "embed"), 0.0125), (("ask", "search"), 0.003)]


# --- the worker's Celery hooks ---


class Recorded:
    def __init__(self) -> None:
        self.groups: list[list[metrics.Observation]] = []

    def record(self, observations: Sequence[metrics.Observation]) -> bool:
        self.groups.append(list(observations))
        return True


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    sink = Recorded()
    monkeypatch.setattr(worker_metrics, "recorder", lambda: sink)
    return sink


class FakeTask:
    name = "quarry.ingest_batch"


def test_a_task_writes_its_stages_count_and_duration_in_one_group(recorded: Recorded) -> None:
    worker_metrics._task_started(task=FakeTask())
    worker_metrics.sink([metrics.stage("ingest", "embed", 0.2), metrics.batch("chunks", 40)])
    worker_metrics._task_ended(task=FakeTask(), state="SUCCESS", retval={"succeeded": 3})
    [group] = recorded.groups
    assert [(o.spec.name, o.labels) for o in group] == [
        ("quarry_stage_duration_seconds", ("ingest", "embed")),
        ("quarry_batch_size", ("chunks",)),
        ("quarry_tasks_total", ("ingest_batch", "succeeded")),
        ("quarry_task_duration_seconds", ("ingest_batch",)),
    ]


def test_outside_a_task_observations_are_written_at_once(recorded: Recorded) -> None:
    thread = threading.Thread(target=worker_metrics.sink, args=([metrics.batch("questions", 5)],))
    thread.start()
    thread.join()
    assert [[o.labels for o in group] for group in recorded.groups] == [[("questions",)]]


@pytest.mark.parametrize(
    ("state", "retval", "outcome"),
    [
        ("SUCCESS", None, "succeeded"),
        ("FAILURE", ValueError("bad"), "failed"),
        ("FAILURE", JobCancelled(), "cancelled"),
        ("RETRY", None, "retried"),
        ("IGNORED", Ignore(), "ignored"),
        ("REJECTED", None, "rejected"),
    ],
)
def test_outcomes(state: str, retval: Any, outcome: str) -> None:
    assert worker_metrics.outcome_of(state, retval) == outcome


def test_task_kinds_are_the_names_without_the_prefix() -> None:
    assert [worker_metrics.kind_of(n) for n in ("quarry.ask", "quarry.delete", "celery.chord", None)] == [
        "ask",
        "delete",
        "other",
        "other",
    ]


# --- the API: request metrics and /metrics ---


def quick(app: Flask) -> Flask:
    """The broker is down too: answer its queue depths at once (kombu would retry for seconds)."""

    def unreachable(queue: str) -> int:
        raise ServiceUnavailable("the job queue (broker) is unreachable")

    app.extensions["quarry"].queue_depth = unreachable
    return app


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return quick(create_app(Settings(redis_url=DOWN, data_dir=tmp_path)))


def scrape(app: Flask) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples(response.get_data(as_text=True))


def requests_of(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str, status: str) -> float:
    return got.get(
        ("quarry_http_requests_total", (("method", "GET"), ("route", route), ("status", status))), 0
    )


def test_requests_are_labelled_by_route_template_and_status(app: Flask) -> None:
    before = scrape(app)
    client = app.test_client()
    statuses = {client.get(f"/api/v1/jobs/{job_id}").status_code for job_id in ("a1", "b2", "c3")}
    assert len(statuses) == 1  # the same answer three times, counted under one template
    status = str(statuses.pop())
    client.get("/no/such/path")
    after = scrape(app)
    template = "/api/v1/jobs/<job_id>"
    assert requests_of(after, template, status) - requests_of(before, template, status) == 3
    assert requests_of(after, "unmatched", "404") - requests_of(before, "unmatched", "404") == 1
    assert not any("a1" in str(labels) for _, labels in after)
    latency = (("method", "GET"), ("route", template), ("status", status))
    assert after["quarry_http_request_duration_seconds_count", latency] >= 3


def test_unknown_methods_share_one_label(app: Flask) -> None:
    app.test_client().open("/healthz", method="BREW")
    got = scrape(app)
    assert any(
        labels[0] == ("method", "other") for name, labels in got if name == "quarry_http_requests_total"
    )


def test_metrics_need_no_key_and_survive_a_dead_redis(tmp_path: Path) -> None:
    keys = [{"name": "main", "sha256": "0" * 64, "collections": ["*"]}]
    app = quick(create_app(Settings(redis_url=DOWN, data_dir=tmp_path, api_keys=keys)))  # type: ignore[arg-type]
    assert app.test_client().get("/api/v1/collections").status_code == 401
    got = scrape(app)
    assert got[("quarry_fleet_metrics_up", ())] == 0
    assert "OpenMetrics" not in app.test_client().get("/metrics").headers["Content-Type"]
    openmetrics = app.test_client().get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")


def test_metrics_are_never_rate_limited(tmp_path: Path) -> None:
    # The limiter keeps its counters in Redis (keys of its own, expiring in a minute; nothing is flushed).
    url = f"redis://127.0.0.1:6379/{os.environ.get('QUARRY_TEST_REDIS_DB', '15')}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379 for the rate limiter")
    app = create_app(Settings(redis_url=url, data_dir=tmp_path, rate_limit="2/minute"))
    client = app.test_client()
    assert [client.get("/api/v1/jobs/x").status_code for _ in range(3)][-1] == 429
    assert {client.get("/metrics").status_code for _ in range(5)} == {200}


class FakeServices:
    def __init__(self, depths: dict[str, int | None]) -> None:
        self.depths = depths
        self.celery = type("App", (), {"conf": type("Conf", (), {})()})()
        self.celery.conf.task_routes = {
            "quarry.ask": {"queue": "ask"},
            "quarry.ingest": {"queue": "ingest"},
        }
        self.celery.conf.task_default_queue = "ask"

    def queue_depth(self, queue: str) -> int:
        depth = self.depths[queue]
        if depth is None:
            raise ServiceUnavailable("the job queue (broker) is unreachable")
        return depth


def test_queue_depths_of_every_routed_queue() -> None:
    registry = CollectorRegistry()
    registry.register(QueueCollector(FakeServices({"ingest": 7, "ask": 0})))  # type: ignore[arg-type]
    got = samples(generate_latest(registry).decode())
    assert got == {
        ("quarry_queue_depth", (("queue", "ingest"),)): 7,
        ("quarry_queue_depth", (("queue", "ask"),)): 0,
    }


def test_an_unreachable_broker_leaves_the_queue_depths_out() -> None:
    registry = CollectorRegistry()
    registry.register(QueueCollector(FakeServices({"ask": None, "ingest": None})))  # type: ignore[arg-type]
    assert samples(generate_latest(registry).decode()) == {}
