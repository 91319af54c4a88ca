"""Deletes uploads past their retention (`common.retention`), from every worker that consumes `ingest`.

One daemon thread in the worker's main process: it loads no model and touches only the upload directory
and Redis. Several workers (hosts sharing the upload directory) may sweep at once: each due directory is
claimed by exactly one of them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import worker_ready

from celeryconfig import INGEST_QUEUE
from common.redis_client import connect_redis
from common.retention import UploadRetention
from common.settings import Settings, get_settings

log = logging.getLogger(__name__)
JOB_DIR = re.compile(r"^[0-9a-f]{32}$")


def sweep(retention: UploadRetention, uploads: Path, orphan_age_s: float, now: float) -> list[str]:
    """Delete the directories due by `now`, and unscheduled ones older than `orphan_age_s`; their names."""
    removed = retention.claim_due(now)
    for name in removed:
        shutil.rmtree(uploads / name, ignore_errors=True)
    if not uploads.is_dir():
        return removed
    scheduled = retention.scheduled()
    with os.scandir(uploads) as entries:
        for entry in entries:
            if not JOB_DIR.match(entry.name) or entry.name in scheduled:
                continue
            if entry.is_dir(follow_symlinks=False) and now - entry.stat().st_mtime > orphan_age_s:
                shutil.rmtree(entry.path, ignore_errors=True)  # a submission that died half-way
                removed.append(entry.name)
    return removed


def _loop(settings: Settings) -> None:
    retention = UploadRetention(connect_redis(settings.redis_url), settings.upload_retention_s)
    orphan_age_s = settings.job_ttl_s + settings.upload_retention_s  # older than any job record
    while True:
        try:
            removed = sweep(retention, settings.uploads, orphan_age_s, time.time())
            if removed:
                log.info("deleted %d uploads past their retention: %s", len(removed), ", ".join(removed[:10]))
        except Exception as exc:  # Redis away, a file system hiccup: try again next time, never die
            log.warning("upload sweep failed: %s", exc)
        time.sleep(settings.sweep_interval_s)


@worker_ready.connect  # type: ignore[untyped-decorator]
def start(sender: Any, **_: Any) -> None:
    """In a worker that consumes `ingest` (where uploads are read), sweep every `sweep_interval_s`."""
    if INGEST_QUEUE in sender.app.amqp.queues.consume_from:
        threading.Thread(target=_loop, args=(get_settings(),), name="upload-sweeper", daemon=True).start()
