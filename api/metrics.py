"""`GET /metrics`: Prometheus metrics of the API, the workers (from Redis) and the broker queues.

Requests are counted and timed by route *template* (`/api/v1/jobs/<job_id>`, never the raw path), so the
number of series stays bounded. Under gunicorn every worker process counts its own requests:
prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by `gunicorn.conf.py`) adds them up
at scrape time. The endpoint is open like /healthz (it is outside /api/: no key, no rate limit) and shows
no tenant's data: routes, counts, timings and queue lengths only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, Response, current_app, g, request, request_finished, request_started
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.services import Services
from common.errors import ServiceUnavailable
from common.job_schema import QUEUED_INDEX, RUNNING_INDEX, Field
from common.messages import queue_lists, sent_at
from common.metrics import FleetCollector, RedisMetrics
from common.redis_client import redis_errors

log = logging.getLogger(__name__)
EXTENSION = "quarry-metrics"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LABELS = ("method", "route", "status")

# Module level: in multiprocess mode the values live in this process's files, whatever the registry.
REQUESTS = Counter(
    "quarry_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    LABELS,
    registry=None,
)
LATENCY = Histogram(
    "quarry_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status",
    LABELS,
    registry=None,
    buckets=LATENCY_BUCKETS,
)


def multiprocess() -> bool:
    """What prometheus_client chose at import (it reads PROMETHEUS_MULTIPROC_DIR itself)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def queues(services: Services) -> list[str]:
    """Every queue a task is routed to, plus the default one."""
    conf = services.celery.conf
    routed = {str(route["queue"]) for route in conf.task_routes.values()}
    return sorted(routed | {str(conf.task_default_queue)})


class ScrapeTimeCollector(Collector):
    """A collector that reads the service at scrape time, and never when it is registered."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not reach Redis or the broker


class QueueCollector(ScrapeTimeCollector):
    """`quarry_queue_depth{queue}`: messages waiting in each broker queue, read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "quarry_queue_depth", "Messages waiting in a broker queue", labels=["queue"]
        )
        for queue in queues(self.services):
            try:
                gauge.add_metric([queue], float(self.services.queue_depth(queue)))
            except ServiceUnavailable as exc:  # the broker is down: no values rather than wrong zeros
                log.warning("queue depths unreadable: %s", exc.detail)
                break  # the other queues would fail alike: one warning per scrape is enough
        yield gauge


class MessageAgeCollector(ScrapeTimeCollector):
    """`quarry_oldest_message_age_seconds{queue}`: how long ago the oldest message waiting in each queue
    was sent (0: none waits), from the tails of kombu's lists and the send time every publish stamps
    (`common.messages`). Ingest batches, webhooks and resent messages are messages but not jobs: this
    covers them. Redis broker only (RabbitMQ's own metrics have `rabbitmq_queue_head_message_timestamp`)."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "quarry_oldest_message_age_seconds",
            "Seconds since the oldest waiting message was sent",
            labels=["queue"],
        )
        client = self.services.broker_redis
        names = [(queue, name) for queue in queues(self.services) for name in queue_lists(queue)]
        try:
            with redis_errors():
                tails = self._tails(client, [name for _, name in names]) if client is not None else None
        except ServiceUnavailable as exc:  # the broker is down: no values rather than wrong zeros
            log.warning("message ages unreadable: %s", exc.detail)
            tails = None
        if tails is not None:
            now, ages = time.time(), dict.fromkeys((queue for queue, _ in names), 0.0)
            for (queue, _), raw in zip(names, tails, strict=True):
                sent = sent_at(raw)
                if raw is not None and sent is None:
                    ages.pop(queue, None)  # a message that does not say when it was sent: no guess
                elif sent is not None and queue in ages:
                    ages[queue] = max(ages[queue], now - sent)
            for queue, age in sorted(ages.items()):
                gauge.add_metric([queue], max(0.0, age))
        yield gauge

    @staticmethod
    def _tails(client: redis.Redis, lists: list[str]) -> list[bytes | None]:
        pipe = client.pipeline(transaction=False)
        for name in lists:
            pipe.lindex(name, -1)  # kombu pushes on the left: the last item is the oldest
        return pipe.execute()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class JobIndex:
    """An index of open jobs (record keys scored by a time) and the two gauges read from it."""

    key: str
    count: tuple[str, str]  # name, help
    age: tuple[str, str]


QUEUED = JobIndex(
    QUEUED_INDEX,
    ("quarry_jobs_queued", "Jobs sent to a queue and not started, by kind"),
    ("quarry_oldest_queued_job_age_seconds", "Seconds the oldest job of a kind has waited"),
)
RUNNING = JobIndex(
    RUNNING_INDEX,
    ("quarry_jobs_running", "Jobs running, by kind"),
    ("quarry_longest_running_job_seconds", "Seconds the longest-running job of a kind has run"),
)


class JobsCollector(ScrapeTimeCollector):
    """Per kind, how many jobs an index holds and the age of its oldest: `quarry_jobs_queued` and
    `quarry_oldest_queued_job_age_seconds` from the index of queued jobs (`QUEUED_INDEX`, scored by when the
    message was sent), `quarry_jobs_running` and `quarry_longest_running_job_seconds` from that of running
    ones (`RUNNING_INDEX`, by start). A queue's depth says how much waits; the age of its oldest job says
    whether anything moves. Reads at most `SCAN` entries of each, oldest first."""

    SCAN = 10_000

    def __init__(self, services: Services, index: JobIndex) -> None:
        super().__init__(services)
        self.index = index

    def collect(self) -> Iterator[Metric]:
        count = GaugeMetricFamily(*self.index.count, labels=["kind"])
        age = GaugeMetricFamily(*self.index.age, labels=["kind"])
        try:
            with redis_errors():
                oldest = self._oldest_by_kind()
        except ServiceUnavailable as exc:  # Redis down: no values rather than wrong zeros
            log.warning("%s unreadable: %s", self.index.key, exc.detail)
            oldest = {}
        now = time.time()
        for kind, (jobs, since) in sorted(oldest.items()):
            count.add_metric([kind], jobs)
            age.add_metric([kind], max(0.0, now - since))
        yield count
        yield age

    def _oldest_by_kind(self) -> dict[str, tuple[int, float]]:
        """kind -> (jobs, the oldest one's score); a record gone since is not counted."""
        client = self.services.redis
        entries: list[tuple[bytes, float]] = client.zrange(  # type: ignore[assignment]
            self.index.key, 0, self.SCAN - 1, withscores=True
        )
        pipe = client.pipeline(transaction=False)
        for key, _ in entries:
            pipe.hget(key, Field.KIND)
        found: dict[str, tuple[int, float]] = {}
        for (_, since), raw in zip(entries, pipe.execute() if entries else [], strict=True):
            if raw is not None:
                kind = str(json.loads(raw))
                jobs, first = found.get(kind, (0, since))
                found[kind] = (jobs + 1, min(first, since))
        return found


def scrape_registry(services: Services) -> CollectorRegistry:
    """What one scrape shows: the API's requests, the workers' metrics and the queues."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        MultiProcessCollector(registry)  # every gunicorn worker's files
    else:
        registry.register(REQUESTS)
        registry.register(LATENCY)
    registry.register(FleetCollector(RedisMetrics(services.redis)))
    registry.register(QueueCollector(services))
    registry.register(MessageAgeCollector(services))
    registry.register(JobsCollector(services, QUEUED))
    registry.register(JobsCollector(services, RUNNING))
    return registry


def route_of() -> str:
    """The matched rule's template; a request no rule matched (404, 405) shares one label value."""
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def _started(sender: Flask, **_: Any) -> None:
    g.metrics_started = time.perf_counter()


def _finished(sender: Flask, response: Response, **_: Any) -> None:
    started: float | None = g.get("metrics_started")
    method = request.method if request.method in METHODS else "other"  # any token is a valid method
    labels = (method, route_of(), str(response.status_code))
    try:
        REQUESTS.labels(*labels).inc()
        if started is not None:
            LATENCY.labels(*labels).observe(time.perf_counter() - started)
    except OSError:  # multiprocess files unwritable (directory gone, disk full): answer all the same
        log.exception("request metrics not recorded")


def scrape() -> Response:
    """Prometheus text format, or OpenMetrics when the scraper asks for it."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(current_app.extensions[EXTENSION])
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def install(app: Flask) -> None:
    """Count every request of `app` and serve `/metrics`; reads nothing until scraped."""
    disable_created_metrics()  # no `_created` series: the same exposition as in multiprocess mode
    app.extensions[EXTENSION] = scrape_registry(app.extensions["quarry"])
    request_started.connect(_started, app)  # before any before_request: auth may refuse the request
    request_finished.connect(_finished, app)  # also for responses made by error handlers
    app.add_url_rule("/metrics", "metrics", scrape, methods=["GET"])
