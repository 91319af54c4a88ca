"""How long uploads live: an ended ingest job's files are deleted `upload_retention_s` after its end.

The API stores every upload (and the coordinator its batch files) under `UPLOAD_DIR/<job id>/`. When an
ingest job ends (`JobStore.on_finish`, whoever ends it), its directory, and the one of the upload it
retried, are scheduled in one sorted set, due at the end plus the retention; a retry in flight unschedules
the upload it reads, and its own end schedules it again. Ingest workers sweep what is due
(`workers.sweeper`). Directories nothing scheduled (a submission that died half-way) are swept once they
are older than a job record can be.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any, cast

import redis

from common.job_schema import Field, JobKeys
from common.redis_client import redis_errors

log = logging.getLogger(__name__)

DUE_KEY = "quarry:uploads:due"  # sorted set: upload directory (a job id) -> when it may be deleted


def source_paths(request: dict[str, Any]) -> list[str]:
    """The stored files an ingest job reads, relative to the upload directory."""
    source = request.get("source") or {}
    paths = [source.get("path", "")] + [item.get("path", "") for item in source.get("files", [])]
    return [path for path in paths if path]


def upload_dirs(job_id: str, request: dict[str, Any]) -> set[str]:
    """The directories an ingest job reads or writes: its own, and the upload's (a retry reads another's)."""
    return {job_id} | {path.split("/", 1)[0] for path in source_paths(request) if "/" in path}


class UploadRetention:
    """Schedules, unschedules and claims upload directories; `__call__` is a `JobStore.on_finish` hook."""

    def __init__(self, client: redis.Redis, retention_s: int) -> None:
        self.client = client
        self.retention_s = retention_s

    def schedule(self, dirs: Iterable[str], now: float | None = None) -> None:
        """Due `retention_s` from now; a later due time already set is kept (another job ended later)."""
        due = (now or time.time()) + self.retention_s
        mapping = {name: due for name in dirs}
        if mapping:
            with redis_errors():
                self.client.zadd(DUE_KEY, mapping, gt=True)  # type: ignore[arg-type]  # GT adds new ones too

    def pin(self, dirs: Iterable[str]) -> None:
        """A retry is about to read these: never delete them until its own end schedules them again."""
        names = list(dirs)
        if names:
            with redis_errors():
                self.client.zrem(DUE_KEY, *names)

    def scheduled(self) -> set[str]:
        with redis_errors():
            return {name.decode() for name in cast(list[bytes], self.client.zrange(DUE_KEY, 0, -1))}

    def claim_due(self, now: float, limit: int = 100) -> list[str]:
        """Directories due by `now`, each claimed by one sweeper only (ZREM answers 1 to one caller)."""
        with redis_errors():
            due = cast(list[bytes], self.client.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=limit))
            return [name.decode() for name in due if self.client.zrem(DUE_KEY, name) == 1]

    def __call__(self, job_id: str) -> None:
        """On a job's end: schedule what an ingest job used. Never raises (the end is recorded already)."""
        try:
            with redis_errors():
                kind, raw = self.client.hmget(JobKeys(job_id).record, [Field.KIND, Field.REQUEST])
            if kind is None or json.loads(kind) != "ingest" or raw is None:
                return
            self.schedule(upload_dirs(job_id, json.loads(raw)))
        except Exception as exc:  # swept later as an orphan, once older than a job record can be
            log.warning("upload of job %s not scheduled for deletion: %s", job_id, exc)
