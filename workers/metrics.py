"""Worker side of the fleet metrics: Celery signals count and time every task, stages add to it.

Imported by the worker at start (`include` of `workers.app`), hooked in by `worker_init`. A task
thread collects what its stages emit and writes it with the task's own count and duration in one Redis
transaction when the task ends; what other threads emit (the ask micro-batcher) is written at once.
The Redis client is this process's own, with short timeouts and no retries: a metrics write that fails
is logged and skipped, it never delays or fails the task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from celery.exceptions import Ignore
from celery.signals import task_postrun, task_prerun, worker_init

from common import metrics
from common.job_record import JobCancelled
from workers.runtime import runtime

log = logging.getLogger(__name__)
OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "IGNORED": "ignored"}

_local = threading.local()  # per task thread: start time and the observations its stages emitted


def recorder() -> metrics.RedisMetrics:
    """This process's writer, created on first use after the fork (with the rest of its runtime)."""
    return runtime().metrics


def kind_of(task_name: str | None) -> str:
    """`quarry.ask` -> `ask`: task names are fixed in code, so the label's values stay few."""
    name = task_name or ""
    return name.removeprefix("quarry.") if name.startswith("quarry.") else "other"


def outcome_of(state: str | None, retval: Any) -> str:
    """`cancelled` for a job a client cancelled (Celery sees a failure), else from Celery's state."""
    if isinstance(retval, JobCancelled):
        return "cancelled"
    if isinstance(retval, Ignore):
        return "ignored"
    return OUTCOMES.get(state or "", (state or "unknown").lower())


def sink(observations: Sequence[metrics.Observation]) -> None:
    """In a running task: keep them for the task's own write. Elsewhere: write them now."""
    buffer: list[metrics.Observation] | None = getattr(_local, "buffer", None)
    if buffer is not None:
        buffer.extend(observations)
    else:
        recorder().record(observations)


def _task_started(task: Any = None, **_: Any) -> None:
    _local.buffer = []
    _local.started = time.perf_counter()


def _task_ended(task: Any = None, state: str | None = None, retval: Any = None, **_: Any) -> None:
    buffer: list[metrics.Observation] = getattr(_local, "buffer", None) or []
    started: float | None = getattr(_local, "started", None)
    _local.buffer, _local.started = None, None
    kind = kind_of(getattr(task, "name", None))
    observations = [
        *buffer,
        metrics.Observation(metrics.TASKS, (kind, outcome_of(state, retval))),
    ]
    if started is not None:
        observations.append(metrics.Observation(metrics.TASK_SECONDS, (kind,), time.perf_counter() - started))
    try:
        recorder().record(observations)
    except Exception:  # never let metrics escape into Celery's task machinery
        log.exception("metrics not recorded")


def install(**_: Any) -> None:
    """At worker start (after the includes are imported, before the pool forks): hook every task."""
    task_prerun.connect(_task_started)
    task_postrun.connect(_task_ended)
    metrics.install(sink)


worker_init.connect(install)  # not at import: tests and tools that import tasks write no metrics
