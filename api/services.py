"""What the API talks to: the job store, the broker (by task name) and a Milvus probe for /healthz."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from functools import cached_property
from typing import Any

import redis
from flask import Response, current_app, jsonify, url_for
from kombu.connection import Connection
from kombu.exceptions import ChannelError, KombuError, OperationalError

from api.auth import principal
from api.idempotency import IdempotencyKeys, header_key, request_fingerprint
from api.redaction import Redactor, display_broker, display_milvus, display_redis
from celeryconfig import make_celery
from common.collection_names import CollectionNames
from common.contracts import Contract, P
from common.errors import ServiceUnavailable
from common.faultpoints import fault_point
from common.fences import Fences
from common.jobs import JobStore, each
from common.redis_client import connect_redis
from common.reports import DocumentReports
from common.retention import UploadRetention
from common.retries import PUBLISH_RETRY
from common.settings import Settings
from common.webhooks import WebhookTrigger
from store.catalog import Catalog
from store.milvus import MilvusStore
from store.uploads import upload_store

log = logging.getLogger(__name__)
BROKER_ERRORS = (OperationalError, KombuError, redis.RedisError, OSError)


def broker_unreachable(exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"the job queue (broker) is unreachable: {exc}")


class Services:
    """Created by `create_app`; nothing here connects until first used."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = connect_redis(settings.redis_url)
        # Cancelling a queued job ends it here: its webhook is enqueued by name, like every task.
        trigger = WebhookTrigger(self.redis, lambda name, kwargs: self.celery.send_task(name, kwargs=kwargs))
        self.retention = UploadRetention(self.redis, settings.upload_retention_s)
        self.jobs = JobStore(
            self.redis,
            settings.job_ttl_s,
            on_finish=each(trigger, self.retention),
            list_cap=settings.job_list_cap,
        )
        self.reports = DocumentReports(self.redis, settings.job_ttl_s)
        self.collections = CollectionNames(self.redis)
        self.fences = Fences(self.redis, settings.job_ttl_s, settings.job_heartbeat_timeout_s)  # numbers jobs
        self.idempotency = IdempotencyKeys(
            self.redis, settings.idempotency_ttl_s, settings.idempotency_pending_s
        )
        self.celery = make_celery(settings)
        self.uploads = upload_store(settings)  # the directory or bucket uploads go to (connects on first use)
        self.redactor = Redactor.from_settings(settings)  # the settings are frozen: every secret, once
        self._milvus_lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._depth_lock = threading.Lock()
        self._depths: dict[str, tuple[float, int]] = {}
        self._depth_failure: tuple[float, Exception] = (-1e9, Exception())

    @cached_property
    def broker_redis(self) -> redis.Redis | None:
        """The broker's Redis (the job store's client when it is the same URL); None for another broker."""
        if not self.settings.broker_is_redis:
            return None
        return (
            self.redis
            if self.settings.broker == self.settings.redis_url
            else connect_redis(self.settings.broker)
        )

    @property
    def catalog(self) -> Catalog:
        """Read-only Milvus views, connected on first use (pymilvus, never torch)."""
        with self._milvus_lock:
            if self._catalog is None:
                self._catalog = Catalog(MilvusStore(self.settings))
            return self._catalog

    def enqueue(self, task_name: str, job_id: str, kwargs: dict[str, Any]) -> None:
        """Send by name (the API never imports task code); a broker failure fails the job record."""
        try:
            self.celery.send_task(
                task_name,
                kwargs=kwargs,
                task_id=job_id,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except BROKER_ERRORS as exc:
            self.jobs.mark_failed(job_id, f"could not be queued: {exc}")
            raise broker_unreachable(exc) from exc

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in a broker queue; one broker read per `queue_depth_cache_s` per process."""
        now = time.monotonic()
        with self._depth_lock:
            read_at, depth = self._depths.get(queue, (-1e9, 0))
            if now - read_at < self.settings.queue_depth_cache_s:
                return depth
            failed_at, failure = self._depth_failure
            if now - failed_at < self.settings.queue_depth_cache_s:
                raise broker_unreachable(failure)  # a down broker is not asked again by every request
        try:
            with self.celery.pool.acquire(block=True, timeout=2) as conn:
                connect_quickly(conn)
                depth = int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:
            depth = 0  # the queue does not exist yet: nothing waits
        except BROKER_ERRORS as exc:
            with self._depth_lock:
                self._depth_failure = (time.monotonic(), exc)
            raise broker_unreachable(exc) from exc
        with self._depth_lock:
            self._depths[queue] = (now, depth)
        return depth

    def health(self) -> dict[str, dict[str, Any]]:
        """Each dependency by scheme, host, port and database; no credential, in any spelling, and
        error texts scrubbed of every configured secret (libraries echo URLs in them)."""
        return {
            "redis": self._check_redis(),
            "broker": self._check_broker(),
            "milvus": self._check_milvus(),
        }

    def _check_redis(self) -> dict[str, Any]:
        url = display_redis(self.settings.redis_url)
        try:
            self.redis.ping()
            return {"ok": True, "url": url}
        except redis.RedisError as exc:
            return {"ok": False, "url": url, "error": self.redactor.error(exc)}

    def _check_broker(self) -> dict[str, Any]:
        url = display_broker(self.settings.broker)
        try:
            with self.celery.connection_for_write() as conn:
                connect_quickly(conn)
            return {"ok": True, "url": url}
        except Exception as exc:  # any transport error means "down" for a health probe
            return {"ok": False, "url": url, "error": self.redactor.error(exc)}

    def _check_milvus(self) -> dict[str, Any]:
        uri = display_milvus(self.settings.milvus_uri)
        try:
            return {"ok": True, "uri": uri, "version": self.catalog.store.ping()}
        except Exception as exc:  # pymilvus raises many types; all mean "down" here
            # The catalog is kept: its client opens a fresh channel itself (store.connection), and a dropped
            # one would leave its own channel open.
            return {"ok": False, "uri": uri, "error": self.redactor.error(exc)}


def connect_quickly(conn: Connection) -> None:
    """One retry within 2 s: kombu's defaults (retries 2 s apart for up to 4 s) held a request 6 s."""
    conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=2)


def services() -> Services:
    return current_app.extensions["quarry"]  # type: ignore[no-any-return]


def submit(
    kind: str,
    contract: Contract[P],
    build: Callable[[str], tuple[P, int]],
    callback_url: str | None = None,
) -> Response:
    """Record a job, then enqueue it: `build(job_id)` stores what the task needs and returns its payload
    and the job's total (`common.contracts`).

    With an `Idempotency-Key`, a retry of the same request answers with the job the first one created, or
    409 while that job is not queued yet (`api.idempotency`: the first request may still fail).
    A `callback_url` (checked by the schema and `require_allowed_host`) goes in the job record, not the task.
    """
    svc, owner = services(), principal().name
    job_id, idem_key = uuid.uuid4().hex, header_key()

    def record_and_queue() -> None:
        payload, total = build(job_id)
        kwargs = contract.kwargs(payload)
        svc.jobs.create(job_id, kind, total, kwargs, owner=owner, callback_url=callback_url)
        svc.enqueue(contract.name, job_id, kwargs)

    if idem_key is None:
        record_and_queue()
        return accepted(job_id)
    scope, fingerprint = owner or "", request_fingerprint()
    claim = svc.idempotency.claim(scope, idem_key, fingerprint, job_id)
    if not claim.new:
        return accepted(claim.job_id, replayed=True)
    try:
        fault_point(svc.settings, "submit-claimed")  # test only: a window to replay or kill in
        record_and_queue()
    except BaseException:
        _release(svc, scope, idem_key, job_id)
        raise
    _promote(svc, scope, idem_key, fingerprint, job_id)
    return accepted(job_id)


def _release(svc: Services, scope: str, key: str, job_id: str) -> None:
    """Nothing was queued: free the key so a retry can submit. Redis away: the claim expires by itself
    after `idempotency_pending_s`, and the request's own error is the one to answer."""
    try:
        svc.idempotency.release(scope, key, job_id)
    except ServiceUnavailable as exc:
        log.warning("Idempotency-Key of failed submission %s not released (it expires): %s", job_id, exc)


def _promote(svc: Services, scope: str, key: str, fingerprint: str, job_id: str) -> None:
    """The job is queued: replays get it from now on. A failure here is logged, not answered: the job
    runs, and a replay is told 409 until the pending claim expires (the key is then free again)."""
    try:
        if not svc.idempotency.promote(scope, key, fingerprint, job_id):
            log.warning("Idempotency-Key of job %s was taken by another request while it was pending", job_id)
    except ServiceUnavailable as exc:
        log.warning("Idempotency-Key of job %s stays pending: %s", job_id, exc)


def accepted(job_id: str, *, replayed: bool = False) -> Response:
    """202 with the job id and where to poll it."""
    status_url = url_for("jobs.get_job", job_id=job_id)
    response = jsonify({"job_id": job_id, "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
