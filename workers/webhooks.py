"""The `quarry.webhook` task: POST a finished job to its `callback_url`, signed, with retries.

One attempt per run: 2xx is delivered; no answer, 429 or 5xx is tried again after an exponential,
jittered delay until `webhook_max_retries`; any other answer gives up at once. Each attempt is recorded
in the job's `callback` field (GET /api/v1/jobs/<id> shows it); the job's own state never changes here.
Delivery is at least once: a receiver dedupes on the event id (the same for every attempt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import requests
from celery import Task

from celeryconfig import WEBHOOK_TASK
from common.jobs import JobRecord, JobStore, now_iso
from common.settings import Settings
from common.webhooks import CALLBACK_FIELD, Verdict, backoff_s, classify, headers, host_allowed, payload
from workers.app import app
from workers.runtime import runtime

log = logging.getLogger(__name__)
FINAL_STATES = frozenset({"delivered", "failed"})
Post = Callable[..., requests.Response]


def _post(
    post: Post, url: str, body: bytes, head: dict[str, str], timeout_s: float
) -> tuple[int | None, str | None]:
    """(status, error) of one POST; redirects are not followed and the answer's body is never read."""
    try:
        response = post(url, data=body, headers=head, timeout=timeout_s, allow_redirects=False, stream=True)
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    response.close()
    status = int(response.status_code)
    return status, None if 200 <= status < 300 else f"HTTP {status} {response.reason or ''}".strip()


def attempt_delivery(
    jobs: JobStore, settings: Settings, job_id: str, event_id: str, *, post: Post = requests.post
) -> Verdict | None:
    """Send the job's webhook once and record the outcome; None when there is nothing (left) to send.

    The job has ended for good (its first end is final: `common.transitions`), so every attempt posts the
    same job.
    """
    record = jobs.get(job_id)
    callback = (record.callback if record else None) or {}
    if record is None or not callback.get("url") or callback.get("state") in FINAL_STATES:
        return None  # expired, no callback, or a redelivered message of a delivery that already ended
    attempt = int(callback.get("attempts") or 0) + 1
    status, error, verdict = _send(record, str(callback["url"]), event_id, settings, post)
    if verdict == "retry" and attempt > settings.webhook_max_retries:
        verdict = "give_up"
    state = {"delivered": "delivered", "retry": "pending", "give_up": "failed"}[verdict]
    outcome = {"state": state, "attempts": attempt, "last_status": status, "last_error": error}
    jobs.write(
        job_id, {CALLBACK_FIELD: {**callback, **outcome, "event_id": event_id, "last_attempt_at": now_iso()}}
    )
    if verdict != "delivered":
        log.warning("webhook of job %s, attempt %d: %s (%s)", job_id, attempt, error, state)
    return verdict


def _send(
    record: JobRecord, url: str, event_id: str, settings: Settings, post: Post
) -> tuple[int | None, str | None, Verdict]:
    if not host_allowed(url, settings.webhook_allowed_hosts):  # the allowlist changed since submission
        return None, "callback host is no longer in WEBHOOK_ALLOWED_HOSTS", "give_up"
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    body = payload(record, event_id)
    status, error = _post(
        post, url, body, headers(record, event_id, body, secret), settings.webhook_timeout_s
    )
    return status, error, classify(status)


@app.task(name=WEBHOOK_TASK, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def deliver_webhook(self: Task, *, job_id: str, event_id: str) -> str | None:
    """One attempt; a retriable failure schedules the next with a countdown (the worker stays free)."""
    rt, tries = runtime(), int(self.request.retries)
    verdict = attempt_delivery(rt.jobs, rt.settings, job_id, event_id)
    if verdict == "retry":
        delay = backoff_s(tries + 1, rt.settings.webhook_backoff_s, rt.settings.webhook_backoff_max_s)
        raise self.retry(countdown=delay, max_retries=None)
    return verdict
