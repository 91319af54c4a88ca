"""The `quarry.webhook` task: POST a finished job to its `callback_url`, signed, with retries.

One attempt per run (`workers.delivery`: resolve, check, connect to the checked address, one deadline):
2xx is delivered; no answer, 429 or 5xx is tried again after an exponential, jittered delay until
`webhook_max_retries`; any other answer, or a callback the address policy now refuses, gives up at once.
Each attempt is recorded in the job's `callback` field (GET /api/v1/jobs/<id> shows it); the job's own
state never changes here.
Delivery is at least once: a receiver dedupes on the event id (the same for every attempt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task

from common.contracts import WEBHOOK
from common.job_record import now_iso
from common.job_schema import Field
from common.jobs import JobStore
from common.retries import webhook_backoff_s
from common.settings import Settings
from common.webhooks import Verdict, headers, payload
from workers.app import app
from workers.delivery import DeliveryResult, deliver
from workers.runtime import runtime

log = logging.getLogger(__name__)
FINAL_STATES = frozenset({"delivered", "failed"})
Post = Callable[[str, bytes, dict[str, str], Settings], DeliveryResult]  # (url, body, headers, settings)


def attempt_delivery(
    jobs: JobStore, settings: Settings, job_id: str, event_id: str, *, post: Post = deliver
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
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    body = payload(record, event_id)
    status, error, verdict = post(
        str(callback["url"]), body, headers(record, event_id, body, secret), settings
    )
    if verdict == "retry" and attempt > settings.webhook_max_retries:
        verdict = "give_up"
    state = {"delivered": "delivered", "retry": "pending", "give_up": "failed"}[verdict]
    outcome = {"state": state, "attempts": attempt, "last_status": status, "last_error": error}
    jobs.write(
        job_id, {Field.CALLBACK: {**callback, **outcome, "event_id": event_id, "last_attempt_at": now_iso()}}
    )
    if verdict != "delivered":
        log.warning("webhook of job %s, attempt %d: %s (%s)", job_id, attempt, error, state)
    return verdict


@app.task(name=WEBHOOK.name, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def deliver_webhook(self: Task, **kwargs: Any) -> str | None:
    """One attempt; a retriable failure schedules the next with a countdown (the worker stays free)."""
    rt, tries, job = runtime(), int(self.request.retries), WEBHOOK.parse(kwargs)
    verdict = attempt_delivery(rt.jobs, rt.settings, job.job_id, job.event_id)
    if verdict == "retry":
        delay = webhook_backoff_s(tries + 1, rt.settings.webhook_backoff_s, rt.settings.webhook_backoff_max_s)
        raise self.retry(countdown=delay, max_retries=None)
    return verdict
