"""Redis clients with timeouts, and the one place a Redis failure becomes a domain error."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.commands.core import Script
from redis.retry import Retry

from common.errors import ServiceUnavailable
from common.retries import REDIS_BACKOFF_BASE_S, REDIS_BACKOFF_CAP_S, redis_tries


@contextmanager
def redis_errors() -> Iterator[None]:
    """The one place a Redis failure becomes ServiceUnavailable (503 in the API, a retry in a task)."""
    try:
        yield
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Redis unreachable: {exc}") from exc


def connect_redis(url: str, **options: Any) -> redis.Redis:
    """A client with timeouts, so a dead Redis fails fast instead of hanging a request; `options` add to
    or override them."""
    defaults: dict[str, Any] = {
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        "health_check_interval": 30,
    }
    return redis.Redis.from_url(url, **{**defaults, **options})


def connect_redis_patient(url: str, outage_s: float) -> redis.Redis:
    """For workers: a command waits out a Redis restart of about `outage_s` instead of failing the task.

    The API keeps `connect_redis` and answers 503 at once; a worker in the middle of a batch would
    otherwise lose work it already did (embedded, written to Milvus) to a short outage.
    """
    backoff = ExponentialBackoff(cap=REDIS_BACKOFF_CAP_S, base=REDIS_BACKOFF_BASE_S)
    return connect_redis(
        url,
        retry=Retry(backoff, redis_tries(outage_s)),  # the policy: common.retries
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def started_at(now: float, server_info: dict[str, Any]) -> float:
    """When Redis (re)started, on the clock of `now`, from its `INFO server` reply: what was written
    before it (a beat, a ready entry replayed from the AOF) says nothing about who is alive now."""
    return now - float(server_info["uptime_in_seconds"]) - 1  # uptime is whole seconds, rounded down


def queue_script(pipe: Pipeline, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue a registered script in a pipeline by its source (EVAL), never by its hash (EVALSHA).

    redis-py loads a pipeline's scripts once, before sending it. When Redis restarts during the send, the
    patient client's retry replays the pipeline against an empty script cache, and EVALSHA fails with
    NOSCRIPT, which no retry mends: a SIGKILLed Redis failed a batch's first heartbeat that way. A script
    called alone (`script(keys=..., args=...)`) reloads itself on NOSCRIPT and needs none of this.
    """
    pipe.eval(cast(str, script.script), len(keys), *keys, *args)  # our sources are str
