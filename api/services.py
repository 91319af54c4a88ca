"""What the API talks to: the job store, the broker (by task name) and a Milvus probe for /healthz."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from flask import current_app
from kombu.exceptions import KombuError, OperationalError

from common.errors import ServiceUnavailable
from common.jobs import JobStore, connect_redis
from common.queueing import make_celery
from common.settings import Settings

log = logging.getLogger(__name__)


class Services:
    """Created by `create_app`; nothing here connects until first used."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect_redis(settings.redis_url)
        self.jobs = JobStore(self.redis, settings.job_ttl_s)
        self.celery = make_celery(settings)
        self._milvus: Any = None
        self._milvus_lock = threading.Lock()

    def enqueue(self, task_name: str, job_id: str, kwargs: dict[str, Any]) -> None:
        """Send by name (the API never imports task code); a broker failure fails the job record."""
        try:
            self.celery.send_task(
                task_name,
                kwargs=kwargs,
                task_id=job_id,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_max": 1},
            )
        except (OperationalError, KombuError, redis.RedisError, OSError) as exc:
            self.jobs.mark_failed(job_id, f"could not be queued: {exc}")
            raise ServiceUnavailable(f"the job queue (broker) is unreachable: {exc}") from exc

    def health(self) -> dict[str, dict[str, Any]]:
        return {"redis": self._check_redis(), "broker": self._check_broker(), "milvus": self._check_milvus()}

    def _check_redis(self) -> dict[str, Any]:
        try:
            self.redis.ping()
            return {"ok": True, "url": _redact(self.settings.redis_url)}
        except redis.RedisError as exc:
            return {"ok": False, "url": _redact(self.settings.redis_url), "error": str(exc)}

    def _check_broker(self) -> dict[str, Any]:
        url = _redact(self.settings.broker)
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return {"ok": True, "url": url}
        except Exception as exc:  # any transport error means "down" for a health probe
            return {"ok": False, "url": url, "error": str(exc)}

    def _check_milvus(self) -> dict[str, Any]:
        uri = _redact(self.settings.milvus_uri)
        try:
            with self._milvus_lock:
                if self._milvus is None:
                    from pymilvus import MilvusClient  # imported on first probe: keeps app start fast

                    self._milvus = MilvusClient(
                        uri=self.settings.milvus_uri, token=self.settings.milvus_token or "", timeout=3
                    )
                version = self._milvus.get_server_version(timeout=3)
            return {"ok": True, "uri": uri, "version": str(version)}
        except Exception as exc:  # pymilvus raises many types; all mean "down" here
            self._milvus = None
            return {"ok": False, "uri": uri, "error": str(exc).splitlines()[0][:300]}


def _redact(url: str) -> str:
    """Hide credentials in URLs shown by /healthz."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def services() -> Services:
    return current_app.extensions["quarry"]  # type: ignore[no-any-return]
