"""Which failures Quarry retries, who retries them and how each retry backs off: the whole policy.

Only an outage is retried (a dependency unreachable, a turn not yet given); bad input, a document that
cannot be read and a model that cannot load fail at once with their reason, because trying again cannot
change them.

Each kind of failure, who tries again, and how:
- **A task's step hit an outage** (`RETRIABLE_ERRORS`): Celery retries the whole task, doubling from
  `TASK_RETRY_BACKOFF_S` to `TASK_RETRY_BACKOFF_MAX_S` with full jitter, `TASK_MAX_RETRIES` times
  (`SETTLE_MAX_RETRIES` for settling a failed batch); in its body by Celery's autoretry, as it starts
  (`before_start`) alike. A job's result is stored by the body's last step (`JobTask.succeed`), not in
  `on_success`, which Celery runs outside its retries. A retry that cannot be sent (the broker away)
  puts its message back in the queue, where Celery would drop it. In `workers.retry_policy.RetryPolicy`.
- **Milvus unreachable**: `milvus_unavailable` (gRPC `UNAVAILABLE` or `DEADLINE_EXCEEDED`, or a message
  naming an outage) makes it `ServiceUnavailable`, retried as above. In `store.connection.milvus_errors`.
- **A broken Milvus channel** (GOAWAY): the client opens a fresh channel and tries the call once more; gRPC
  reconnects within 0.25-1 s once Milvus is back. In `store.connection`.
- **A Redis command in a worker**: redis-py tries again inside the call, 50 ms doubling to a 1 s cap,
  `redis_tries` times, which waits out a restart of about `WORKER_REDIS_OUTAGE_S`
  (`common.redis_client.connect_redis_patient`). **In the API**: nobody; a 503 at once, the client decides.
- **Publishing a task** (API): kombu tries `PUBLISH_RETRY` (2 more tries, 0.2 s then up to 1 s apart),
  then 503. In `api.services`. **In a worker** (a coordinator's batches, a settle, a webhook, a re-send):
  `worker_publish_retry`, which waits out the same outage as its Redis commands. In `workers.app`.
- **A webhook POST** without an answer, or answered 429 or 5xx: the webhook task, `webhook_backoff_s`
  (doubling from `WEBHOOK_BACKOFF_S` to `WEBHOOK_BACKOFF_MAX_S`, half jitter), `WEBHOOK_MAX_RETRIES` times.
- **A document lock or write turn held by another**: the waiting task asks again every `LOCK_POLL_S`
  (document locks) or `WRITE_POLL_S` (write turns), jittered, until `LOCK_WAIT_S`; then
  `ServiceUnavailable`, so the task retries. In `common.locks`.
- **A batched model or write call failed**: split in halves down to the one item that fails; an outage is
  not split (`common.isolation`, `workers.embedder.run_halving`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from common.errors import ServiceUnavailable

RETRIABLE_ERRORS: tuple[type[Exception], ...] = (ServiceUnavailable, ConnectionError, TimeoutError)
"""What a task may retry: transient infrastructure failures, never bad input."""

MILVUS_RETRIABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})  # gRPC status code names
MILVUS_OUTAGE_HINTS = ("connect", "unavailable", "deadline", "timeout", "timed out", "not ready", "released")
"""Words of a pymilvus error that mean an outage: pymilvus wraps most codes into one exception type."""

PUBLISH_RETRY: dict[str, Any] = {"max_retries": 2, "interval_start": 0.2, "interval_max": 1}
"""kombu's retry policy for the API's publish of a task: a broker blip, not an outage, is waited out."""

LOCK_POLL_S = (0.05, 0.3)  # a document lock is held for a whole batch: ask again now and then
WRITE_POLL_S = (0.002, 0.02)  # a write request takes milliseconds: ask again soon

TASK_RETRY_JITTER = True  # Celery's full jitter: retries of many tasks after one outage do not arrive at once
REDIS_BACKOFF_BASE_S, REDIS_BACKOFF_CAP_S = 0.05, 1.0


def milvus_unavailable(message: str, grpc_code: str | None = None) -> bool:
    """Whether a Milvus failure is an outage (retried) rather than a refusal (fails the job)."""
    if grpc_code is not None:
        return grpc_code in MILVUS_RETRIABLE_CODES
    return any(hint in message.lower() for hint in MILVUS_OUTAGE_HINTS)


def redis_tries(outage_s: float) -> int:
    """Tries of a worker's Redis command to wait out an outage of about `outage_s`: the backoff reaches
    its 1 s cap after about four tries, then each try is a second."""
    return int(outage_s) + 4


def worker_publish_retry(outage_s: float) -> dict[str, Any]:
    """kombu's retry policy for a worker's publish: reconnects 0.2 s apart, growing to 1 s, for about
    `outage_s`. Celery's default gives up after about 0.6 s, so a Redis restart in the middle of a
    coordinator's fan-out failed the whole job while every Redis command around it waited the restart out."""
    return {
        "max_retries": redis_tries(outage_s),
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": REDIS_BACKOFF_CAP_S,
    }


def webhook_backoff_s(
    attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before the retry that follows attempt `attempt` (1-based): doubling, capped, half jittered
    (never under half the delay, so a receiver that is down is not hammered)."""
    delay = min(max_s, base_s * 2.0 ** (attempt - 1))
    return delay / 2 + rand() * delay / 2
