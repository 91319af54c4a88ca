"""Fleet metrics: workers add counters and histogram buckets to Redis hashes, the API exposes them.

Celery workers are other processes, possibly on other hosts, so they cannot serve a scrape of their own
behind one `/metrics`: each task (or micro-batch) adds its observations to one hash per metric in one
Redis transaction, and `FleetCollector` turns the hashes into Prometheus families when the API is
scraped. Code that times a stage calls `emit`/`timed`, which do nothing until a process installs a sink
(`workers.metrics` does, in worker processes only): the benchmark and the API never write.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from common import tracing

log = logging.getLogger(__name__)
KEY_PREFIX = "quarry:metrics:"

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0)


@dataclass(frozen=True)
class MetricSpec:
    """One fleet metric: what writers add to and what the collector exposes."""

    name: str  # exposition name; a counter's ends in _total
    type: Literal["counter", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.name


TASKS = MetricSpec(
    "quarry_tasks_total", "counter", "Celery tasks that ended, by kind and outcome", ("kind", "outcome")
)
TASK_SECONDS = MetricSpec(
    "quarry_task_duration_seconds", "histogram", "Run time of a task, by kind", ("kind",), DURATION_BUCKETS
)
STAGE_SECONDS = MetricSpec(
    "quarry_stage_duration_seconds",
    "histogram",
    "Time of one pipeline stage over one batch (ingest: parse, chunk, embed, write, flush, gave_way: "
    "embedding paused for questions, and ran_through: embedding ran on through questions that held the "
    "device too long; ask: embed, search, rerank)",
    ("pipeline", "stage"),
    STAGE_BUCKETS,
)
BATCH_SIZE = MetricSpec(
    "quarry_batch_size",
    "histogram",
    "Items per batch: questions per ask micro-batch, documents per ingest batch, chunks per embed call",
    ("batch",),
    SIZE_BUCKETS,
)
JOBS_ENDED = MetricSpec(  # counted by the job's move into its end (`common.transitions`), once per job
    "quarry_jobs_ended_total", "counter", "Jobs that ended, by kind and state", ("kind", "state")
)
FLEET = (TASKS, TASK_SECONDS, STAGE_SECONDS, BATCH_SIZE, JOBS_ENDED)


@dataclass(frozen=True)
class Observation:
    """A counter increment (`value` = amount) or one histogram observation."""

    spec: MetricSpec
    labels: tuple[str, ...]
    value: float = 1.0

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.spec.labels):
            raise ValueError(f"{self.spec.name} takes labels {self.spec.labels}, got {self.labels}")


def _field(labels: Sequence[str], part: str) -> str:
    return json.dumps([*labels, part])


def _bound(spec: MetricSpec, value: float) -> str:
    """The bucket an observation falls in (non-cumulative; the collector adds them up)."""
    index = bisect_left(spec.buckets, value)
    return floatToGoString(spec.buckets[index]) if index < len(spec.buckets) else "+Inf"


class RedisMetrics:
    """Writes and reads fleet metrics. A write never raises: metrics must not fail a task."""

    def __init__(self, client: redis.Redis, *, pause_s: float = 30.0) -> None:
        self.client = client
        self.pause_s = pause_s  # after a failed write, skip writes this long (no timeout per task)
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def record(self, observations: Iterable[Observation]) -> bool:
        """Add every observation in one transaction; False (logged) when Redis refused."""
        observations = list(observations)
        if not observations or time.monotonic() < self._paused_until:
            return False
        try:
            pipe = self.client.pipeline(transaction=True)
            for obs in observations:
                self._add(pipe, obs)
            pipe.execute()
            return True
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                self._paused_until = time.monotonic() + self.pause_s
            log.warning("metrics not recorded (next try in %.0f s): %s", self.pause_s, exc)
            return False

    @staticmethod
    def _add(pipe: Any, obs: Observation) -> None:
        spec = obs.spec
        if spec.type == "counter":
            pipe.hincrbyfloat(spec.key, _field(obs.labels, "value"), obs.value)
            return
        pipe.hincrby(spec.key, _field(obs.labels, _bound(spec, obs.value)), 1)
        pipe.hincrby(spec.key, _field(obs.labels, "count"), 1)
        pipe.hincrbyfloat(spec.key, _field(obs.labels, "sum"), obs.value)

    def read(self, specs: Sequence[MetricSpec] = FLEET) -> list[Metric]:
        """Every fleet metric as a Prometheus family (one round trip); raises on a Redis error."""
        pipe = self.client.pipeline(transaction=False)
        for spec in specs:
            pipe.hgetall(spec.key)
        return [family(spec, raw) for spec, raw in zip(specs, pipe.execute(), strict=True)]


def _series(raw: Mapping[bytes, bytes]) -> dict[tuple[str, ...], dict[str, float]]:
    """Hash fields grouped by label values: {labels: {part: value}}."""
    series: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for name, value in raw.items():
        *labels, part = json.loads(name)
        series[tuple(labels)][part] = float(value)
    return series


def family(spec: MetricSpec, raw: Mapping[bytes, bytes]) -> Metric:
    """One metric's hash as a Prometheus family; histogram buckets are made cumulative here."""
    series = sorted(_series(raw).items())
    if spec.type == "counter":
        counter = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        for labels, parts in series:
            counter.add_metric(labels, parts.get("value", 0.0))
        return counter
    histogram = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, parts in series:
        running, buckets = 0.0, []
        for bound in spec.buckets:
            running += parts.get(floatToGoString(bound), 0.0)
            buckets.append((floatToGoString(bound), running))
        buckets.append(("+Inf", parts.get("count", 0.0)))
        histogram.add_metric(labels, buckets, sum_value=parts.get("sum", 0.0))
    return histogram


class FleetCollector(Collector):
    """The workers' metrics, read from Redis at scrape time; `quarry_fleet_metrics_up` says if that worked."""

    def __init__(self, metrics: RedisMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read Redis

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "quarry_fleet_metrics_up", "1 when the workers' metrics could be read from Redis"
        )
        try:
            yield from self.metrics.read()
            up.add_metric([], 1.0)
        except (redis.RedisError, OSError) as exc:
            log.warning("fleet metrics unreadable: %s", exc)
            up.add_metric([], 0.0)
        yield up


# --- the process's sink: where `emit` sends observations (nowhere until a worker installs one) ---

Sink = Callable[[Sequence[Observation]], None]
_sink: Sink | None = None


def install(sink: Sink | None) -> None:
    """Send this process's observations to `sink` (None: drop them again)."""
    global _sink  # noqa: PLW0603 - one sink per process, like logging's handlers
    _sink = sink


def emit(*observations: Observation) -> None:
    """Hand observations to the sink; never raises, whatever the sink does."""
    sink = _sink
    if sink is None or not observations:
        return
    try:
        sink(observations)
    except Exception:  # a metrics failure must never fail the work it measures
        log.exception("metrics sink failed")


def stage(pipeline: str, name: str, seconds: float) -> Observation:
    return Observation(STAGE_SECONDS, (pipeline, name), seconds)


def batch(kind: str, size: int) -> Observation:
    return Observation(BATCH_SIZE, (kind,), float(size))


@contextmanager
def timed(pipeline: str, name: str) -> Iterator[None]:
    """Emit the block's duration as one stage observation (also when it raises), and trace it as a span
    of the running task (`common.tracing`; nothing when tracing is off)."""
    start = time.perf_counter()
    try:
        with tracing.span(f"{pipeline}.{name}"):
            yield
    finally:
        emit(stage(pipeline, name, time.perf_counter() - start))


def stage_timings(pipeline: str, timings: Mapping[str, float]) -> list[Observation]:
    """Stage observations from a result's `timings` (`<stage>_ms` entries)."""
    return [
        stage(pipeline, key.removesuffix("_ms"), value / 1000)
        for key, value in timings.items()
        if key.endswith("_ms")
    ]
