"""Webhooks: a job submitted with a `callback_url` gets one signed POST when it ends.

Whichever process ends a job (a worker, or the API cancelling a queued job) calls `WebhookTrigger` from
`JobStore._finish`. It claims the job's single event with HSETNX, so redeliveries and races never send
twice, and enqueues `quarry.webhook` by name (the API imports no worker code). The delivery task
(`workers.webhooks`) builds the body, signs it and retries transient failures; it writes only the
record's `callback` field, never the job's own state. Plain functions here are shared by both sides.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import redis

from celeryconfig import WEBHOOK_TASK
from common.errors import InvalidRequest
from common.jobs import JobRecord, JobStore, now_iso

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
CALLBACK_FIELD = "callback"  # {"url", "state", "attempts", "last_status", "last_error", ...}
EVENT_FIELD = "callback_event"  # the job's one event id, claimed once with HSETNX
SIGNATURE_HEADER = "X-Quarry-Signature"
USER_AGENT = "Quarry-Webhook/1"
Verdict = Literal["delivered", "retry", "give_up"]


def check_callback_url(url: str) -> str:
    """Pydantic validator of `callback_url`: http(s), a host, at most 2048 characters."""
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"must be at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not host:
        raise ValueError("must name a host")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    return url


def host_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether the URL's host is on the allowlist (empty: any host); `*.example.com` allows subdomains."""
    if not allowed:
        return True
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    for entry in (item.lower().rstrip(".") for item in allowed):
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def require_allowed_host(url: str | None, allowed: Sequence[str]) -> None:
    """The API's SSRF guard: a callback host outside `WEBHOOK_ALLOWED_HOSTS` is refused with 422."""
    if url is not None and not host_allowed(url, allowed):
        host = urlsplit(url).hostname
        raise InvalidRequest(
            f"callback_url host {host!r} is not allowed (WEBHOOK_ALLOWED_HOSTS)",
            errors=[{"loc": "callback_url", "msg": "host not allowed"}],
        )


def sign(secret: str, body: bytes) -> str:
    """The X-Quarry-Signature value: `sha256=` + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def classify(status: int | None) -> Verdict:
    """2xx delivered; no answer (connection error, timeout), 429 and 5xx retry; anything else gives up.

    Redirects are not followed (they could point past the allowlist), so a 3xx gives up too.
    """
    if status is None or status == 429 or status >= 500:
        return "retry"
    return "delivered" if 200 <= status < 300 else "give_up"


def backoff_s(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before the retry that follows attempt `attempt` (1-based): doubling, capped, half jittered."""
    delay = min(max_s, base_s * 2.0 ** (attempt - 1))
    return delay / 2 + rand() * delay / 2


def event_name(record: JobRecord) -> str:
    return f"job.{record.state}"


def payload(record: JobRecord, event_id: str) -> bytes:
    """The body: the job as GET /api/v1/jobs/<id> shows it (without its own delivery state), the event."""
    job = record.to_json()
    job.pop(CALLBACK_FIELD, None)
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
        key = JobStore.key(job_id)
        try:
            raw = self.client.hget(key, CALLBACK_FIELD)
            callback = json.loads(raw) if raw else None
            if not callback or not callback.get("url"):
                return
            event_id = uuid.uuid4().hex
            if not self.client.hsetnx(key, EVENT_FIELD, json.dumps(event_id)):
                return  # this job's event was claimed already: a second end (redelivery, race) sends nothing
            self.send(WEBHOOK_TASK, {"job_id": job_id, "event_id": event_id})
        except Exception as exc:  # the job's own end is recorded; only its notification is lost
            log.warning("webhook of job %s not queued: %s", job_id, exc)
            self._record_unqueued(key, exc)

    def _record_unqueued(self, key: str, exc: Exception) -> None:
        try:
            raw = self.client.hget(key, CALLBACK_FIELD)
            if raw:
                callback = {**json.loads(raw), "state": "failed", "last_error": f"could not be queued: {exc}"}
                self.client.hset(key, CALLBACK_FIELD, json.dumps(callback))
        except Exception as error:  # Redis itself is away: nothing more to do
            log.warning("webhook state not recorded: %s", error)
