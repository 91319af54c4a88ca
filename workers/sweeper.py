"""Deletes uploads past their retention (`common.retention`), from every worker that consumes `parse`, sends
again the lost messages of queued jobs (`workers.reconciler`), and hands the tasks of a vanished worker to
another (`workers.handoff`, every `JOB_HEARTBEAT_INTERVAL_S` on a thread of its own); the last two for a Redis
broker only.

One daemon thread in the worker's main process: it loads no model and touches only the upload directory,
Redis and the broker. Several workers (hosts sharing the upload directory) may sweep at once: each due
directory, and each re-send, is claimed by exactly one of them.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from celery.signals import worker_ready

from common.contracts import PARSE_QUEUE
from common.jobs import JobStore
from common.redis_client import connect_redis
from common.retention import UploadRetention
from common.settings import Settings, get_settings
from common.types import UploadStore
from store.uploads import upload_store
from workers.handoff import Handoff, Restore, restorer
from workers.lost_batches import LostBatches
from workers.reconciler import Reconciler, Send, for_settings

log = logging.getLogger(__name__)
JOB_DIR = re.compile(r"^[0-9a-f]{32}$")


def sweep(retention: UploadRetention, uploads: UploadStore, orphan_age_s: float, now: float) -> list[str]:
    """Delete the job directories due by `now`, and unscheduled ones unchanged for `orphan_age_s`; their
    names. The store unreachable raises (the next sweep tries again)."""
    removed = retention.claim_due(now)
    for name in removed:
        uploads.remove(name)
    scheduled = retention.scheduled()
    for name in uploads.stale(now - orphan_age_s):
        if JOB_DIR.match(name) and name not in scheduled:
            uploads.remove(name)  # a submission that died half-way
            removed.append(name)
    return removed


def _loop(settings: Settings, send: Send) -> None:
    retention = UploadRetention(connect_redis(settings.redis_url), settings.upload_retention_s)
    uploads = upload_store(settings)  # one store (and S3 client) for every sweep
    reconciler = for_settings(settings, send)
    batches = None
    if reconciler is not None:
        batches = LostBatches(reconciler.jobs, reconciler.broker, send, settings.requeue_after_s)
    orphan_age_s = settings.job_ttl_s + settings.upload_retention_s  # older than any job record
    while True:
        try:
            removed = sweep(retention, uploads, orphan_age_s, time.time())
            if removed:
                log.info("deleted %d uploads past their retention: %s", len(removed), ", ".join(removed[:10]))
        except Exception as exc:  # Redis away, a file system hiccup: try again next time, never die
            log.warning("upload sweep failed: %s", exc)
        _reconcile(reconciler, batches)
        time.sleep(settings.sweep_interval_s)


def _reconcile(reconciler: Reconciler | None, batches: LostBatches | None) -> None:
    """Lost messages of queued jobs, then of their batches (None: the broker is not Redis)."""
    if reconciler is None or batches is None:
        return
    try:
        reconciler.sweep(time.time())
        batches.sweep(time.time())
    except Exception as exc:  # Redis or the broker away: look again next time, never die
        log.warning("sweep for lost messages failed: %s", exc)


def _hand_off(settings: Settings, restore: Restore) -> None:
    jobs = connect_redis(settings.redis_url)
    store = JobStore(jobs, settings.job_ttl_s)
    handoff = Handoff(jobs, connect_redis(settings.broker), restore, store.note_retry)
    while True:
        try:
            handoff.sweep(time.time())
        except Exception as exc:  # Redis or the broker away: look again next time, never die
            log.warning("sweep for the tasks of vanished workers failed: %s", exc)
        time.sleep(settings.job_heartbeat_interval_s)


@worker_ready.connect  # type: ignore[untyped-decorator]
def start(sender: Any, **_: Any) -> None:
    """In a worker that consumes `parse` (where uploads are read), sweep every `sweep_interval_s`, and hand
    on the tasks of vanished workers every `job_heartbeat_interval_s`."""
    app, settings = sender.app, get_settings()
    if PARSE_QUEUE not in app.amqp.queues.consume_from:
        return

    def send(task: str, task_id: str | None, kwargs: dict[str, Any]) -> None:
        app.send_task(task, kwargs=kwargs, task_id=task_id)

    threading.Thread(target=_loop, args=(settings, send), name="upload-sweeper", daemon=True).start()
    if settings.broker_is_redis:
        threading.Thread(
            target=_hand_off, args=(settings, restorer(app.connection_for_write)), name="handoff", daemon=True
        ).start()
