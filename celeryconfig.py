"""Every Celery setting, derived from Quarry's settings object (the only source of configuration)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from celery import Celery
from celery.signals import before_task_publish

from common.contracts import ASK_QUEUE, TASK_QUEUES
from common.messages import stamp_sent
from common.settings import Settings

WARM_START_S = 600.0  # how long a prefork child may take to load and warm its models (workers/warmup.py)
_REDIS_TRANSPORT = "common.broker:Transport"  # a name: kombu imports it when it first connects

# Queues per kind of work: parsing where CPUs are, model work where the device is, and on each device
# questions before bulk embedding (workers/gate.py). Every task's name, queue and payload: common.contracts.


def from_settings(settings: Settings) -> dict[str, Any]:
    """Celery configuration; the API and the workers build their apps from the same dict."""
    return {
        "broker_url": settings.broker,
        # kombu's Redis transport with the fix that keeps a worker alive when Redis is killed under it
        # (common/broker.py says why); loaded by kombu with the first broker connection. Not for rediss://,
        # whose default TLS options kombu keys on the scheme name.
        "broker_transport": _REDIS_TRANSPORT if urlparse(settings.broker).scheme == "redis" else None,
        "result_backend": settings.result_backend,
        "broker_connection_retry_on_startup": True,
        # JSON only: tasks take ids, paths and small JSON, never pickles.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": {task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        "task_default_queue": ASK_QUEUE,
        "task_create_missing_queues": True,
        # At-least-once: ack after the task ran, one message in flight per process. A child process that
        # dies mid-task (SIGKILL, OOM) puts its message back in the queue; tasks count deliveries and
        # fail after `max_deliveries`, so a task that kills its worker every time cannot loop forever.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A prefork child loads and warms its models at `worker_process_init` (workers/warmup.py) before it
        # reports up; Celery kills a child silent for longer (default 4 s, too short for a model load, let
        # alone a first download). The parent hands a child no task before it is up.
        "worker_proc_alive_timeout": WARM_START_S,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # Redis redelivers unacked messages (their whole worker vanished) after this; it must outlast the
        # longest task, or a slow task runs twice.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        # Results live in Quarry's job records; Celery keeps only failures (used to spot lost workers).
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": True,
        "result_expires": settings.job_ttl_s,
        # Task events feed monitors such as Flower (off by default: one Redis publish per task state).
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """The one way to build a Celery app (the API enqueues by task name with it, importing no task);
    creating it connects to nothing."""
    app = Celery("quarry", include=list(include), set_as_current=False)
    app.conf.update(from_settings(settings))
    # Every message says when it was sent (the age of a queue's oldest, in /metrics); once per process.
    before_task_publish.connect(stamp_sent, weak=False, dispatch_uid="quarry.stamp_sent")
    return app
