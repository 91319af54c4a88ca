"""Webhooks: a job submitted with a `callback_url` gets one signed POST when it ends.

Whichever process ends a job (a worker, or the API cancelling a queued job) calls `WebhookTrigger` from
`JobStore._finish`. It claims the job's single event with HSETNX, so redeliveries and races never send
twice, and enqueues `quarry.webhook` by name (the API imports no worker code). The delivery task
(`workers.webhooks`) builds the body, signs it and retries transient failures; it writes only the
record's `callback` field, never the job's own state. Plain functions here are shared by both sides;
where a callback may go (URL syntax, host allowlist, addresses) is `common.callback_urls`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, Literal

import redis

from common.callback_urls import CallbackRefused, Resolver, Unresolved, check_target
from common.contracts import WEBHOOK, Webhook
from common.errors import InvalidRequest
from common.job_record import JobRecord, now_iso
from common.job_schema import Field, JobKeys
from common.settings import Settings

log = logging.getLogger(__name__)

SUBMIT_RESOLVE_TIMEOUT_S = 2.0  # the API waits this long for the resolver at most (a request is held)
SIGNATURE_HEADER = "X-Quarry-Signature"
USER_AGENT = "Quarry-Webhook/1"
Verdict = Literal["delivered", "retry", "give_up"]


def require_allowed_host(url: str | None, settings: Settings, resolver: Resolver | None = None) -> None:
    """The API's SSRF guard, run before a job is stored: a callback the worker would refuse is a 422.

    The host must be on `WEBHOOK_ALLOWED_HOSTS` (when set) and every address it resolves to public or in
    `WEBHOOK_ALLOWED_NETWORKS`; a name that does not exist is refused too. A resolver that fails for now
    (or takes longer than SUBMIT_RESOLVE_TIMEOUT_S) does not hold the request: the delivery checks again.
    """
    if url is None:
        return
    timeout_s = min(SUBMIT_RESOLVE_TIMEOUT_S, settings.webhook_timeout_s)
    try:
        check_target(url, settings, timeout_s, resolver)
    except CallbackRefused as exc:
        raise InvalidRequest(str(exc), errors=[{"loc": "callback_url", "msg": str(exc)}]) from None
    except Unresolved as exc:
        if exc.not_found:
            detail = f"callback_url host cannot be called: {exc}"
            raise InvalidRequest(detail, errors=[{"loc": "callback_url", "msg": detail}]) from None
        log.info("callback_url accepted unchecked, the resolver failed: %s", exc)


def sign(secret: str, body: bytes) -> str:
    """The X-Quarry-Signature value: `sha256=` + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def classify(status: int | None) -> Verdict:
    """2xx delivered; no answer (connection error, timeout), 429 and 5xx retry; anything else gives up.

    Redirects are not followed (they could point past the address checks), so a 3xx gives up too.
    """
    if status is None or status == 429 or status >= 500:
        return "retry"
    return "delivered" if 200 <= status < 300 else "give_up"


def event_name(record: JobRecord) -> str:
    return f"job.{record.state}"


def payload(record: JobRecord, event_id: str) -> bytes:
    """The body: the job as GET /api/v1/jobs/<id> shows it (without its own delivery state), the event."""
    job = record.to_json()
    job.pop(Field.CALLBACK, None)
    body = {"event": event_name(record), "event_id": event_id, "sent_at": now_iso(), "job": job}
    return json.dumps(body, separators=(",", ":")).encode()


def headers(record: JobRecord, event_id: str, body: bytes, secret: str | None) -> dict[str, str]:
    out = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Quarry-Event": event_name(record),
        "X-Quarry-Event-Id": event_id,
        "X-Quarry-Job": record.job_id,
    }
    if secret:
        out[SIGNATURE_HEADER] = sign(secret, body)
    return out


class WebhookTrigger:
    """`JobStore.on_finish`: enqueue the job's one webhook if it has a callback; never raises."""

    def __init__(self, client: redis.Redis, send: Callable[[str, dict[str, Any]], Any]) -> None:
        self.client = client
        self.send = send  # (task name, kwargs) -> enqueue by name

    def __call__(self, job_id: str) -> None:
        key = JobKeys(job_id).record
        try:
            raw = self.client.hget(key, Field.CALLBACK)
            callback = json.loads(raw) if raw else None
            if not callback or not callback.get("url"):
                return
            event_id = uuid.uuid4().hex
            claimed = self.client.hsetnx(key, Field.CALLBACK_EVENT, json.dumps(event_id))
            # A repeat of an HSETNX whose reply was lost (the workers' client sends it again) finds our id.
            if not claimed and self.client.hget(key, Field.CALLBACK_EVENT) != json.dumps(event_id).encode():
                return  # this job's event was claimed already: a second end (redelivery, race) sends nothing
            self.send(WEBHOOK.name, WEBHOOK.kwargs(Webhook(job_id=job_id, event_id=event_id)))
        except Exception as exc:  # the job's own end is recorded; only its notification is lost
            log.warning("webhook of job %s not queued: %s", job_id, exc)
            self._record_unqueued(key, exc)

    def _record_unqueued(self, key: str, exc: Exception) -> None:
        try:
            raw = self.client.hget(key, Field.CALLBACK)
            if raw:
                callback = {**json.loads(raw), "state": "failed", "last_error": f"could not be queued: {exc}"}
                self.client.hset(key, Field.CALLBACK, json.dumps(callback))
        except Exception as error:  # Redis itself is away: nothing more to do
            log.warning("webhook state not recorded: %s", error)
