"""How a task meets failure: which errors it retries, with what backoff, and the reason a client reads
(the policy itself: `common.retries`)."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from common.faultpoints import fault_point
from common.isolation import describe
from common.retries import RETRIABLE_ERRORS, TASK_RETRY_JITTER
from common.settings import get_settings
from workers.reliability import WorkerLost
from workers.runtime import runtime

_settings = get_settings()


def failure_reason(exc: BaseException) -> str:
    """What a client reads in the job's `error`."""
    if isinstance(exc, WorkerLost):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = _settings.task_soft_time_limit_s
        return f"the task ran past its time limit (TASK_SOFT_TIME_LIMIT_S={limit} s) and was stopped"
    return describe(exc)


class RetryPolicy(Task):  # type: ignore[misc]
    """Retry only retriable errors (infrastructure unreachable), with exponential backoff and jitter
    (the policy: `common.retries`)."""

    autoretry_for = RETRIABLE_ERRORS
    max_retries = _settings.task_max_retries
    retry_backoff = _settings.task_retry_backoff_s
    retry_backoff_max = _settings.task_retry_backoff_max_s
    retry_jitter = TASK_RETRY_JITTER

    def retry_outage(self, exc: Exception) -> Retry:
        """The retry Celery's autoretry makes of an outage in the body (same backoff, same limit), for the
        `before_start` hooks, which it does not wrap: there an outage failed the job for good, where the
        same outage a step later, in the body, was retried (past the limit it raises `exc`: the job fails)."""
        countdown = None  # Celery's default_retry_delay, as autoretry without a backoff
        if self.retry_backoff:
            factor = int(max(1.0, self.retry_backoff))
            retries, cap, jitter = self.request.retries, self.retry_backoff_max, self.retry_jitter
            countdown = get_exponential_backoff_interval(factor, retries, cap, full_jitter=jitter)
        return self.retry(exc=exc, countdown=countdown)

    def retry(self, *args: Any, **kwargs: Any) -> Retry:
        """Celery's retry, but a retry it cannot send (the broker away past the publish retries) puts the
        message back instead of dropping it. Celery rejects it without requeueing, which under late acks
        lost the task: a batch came back only by the lost-batch sweep, minutes later, a question never.
        Requeued, it is delivered again (a delivery of the same attempt, counted towards MAX_DELIVERIES).
        Every retry comes here: autoretry's of the body, and `retry_outage`'s of the start."""
        fault_point(runtime().settings, "retry_outage")  # test only: the outage met, nothing retried yet
        try:
            return super().retry(*args, **kwargs)  # type: ignore[no-any-return]
        except Reject as exc:
            if exc.requeue:
                raise
            raise Reject(exc.reason, requeue=True) from exc
