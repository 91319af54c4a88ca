"""Which workers are ready, per queue: workers write it once warm, `GET /readyz` reads it.

The one key shape: per queue a sorted set `quarry:ready:<queue>` of worker ids (`name@host:pid`), each
scored by the time its entry expires. A worker adds itself once it can take that queue's tasks at full
speed (its models loaded and warmed, workers/warmup.py), an `Announcer` thread pushes the expiry
forward every `REFRESH_S`, and a clean shutdown removes the entry; a worker that dies silently drops out
`TTL_S` after its last refresh. Time is Redis's own (`TIME`): hosts with skewed clocks still agree.
An entry written before Redis (re)started counts for nothing: a Redis restarted from its append-only
file, or started on a copy of another's data, holds entries of workers that may be gone or warming up
again; a live worker writes a fresh one within `REFRESH_S`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Any

import redis

from common.redis_client import redis_errors, started_at

log = logging.getLogger(__name__)

KEY_PREFIX = "quarry:ready:"
TTL_S = 15.0  # an entry outlives its last refresh by this; three refreshes may fail in a row
REFRESH_S = 5.0


def now_of(client: Any) -> float:
    """Redis's clock, in seconds: one clock for every writer and reader."""
    return _seconds(client.time())


def _seconds(time_reply: tuple[Any, Any]) -> float:
    """A `TIME` reply (seconds, microseconds) as seconds."""
    seconds, micros = time_reply
    return float(seconds) + float(micros) / 1e6


class ReadyWorkers:
    """The registry of ready workers by queue (a Redis client that does not decode, or one that does)."""

    def __init__(self, client: redis.Redis, ttl_s: float = TTL_S) -> None:
        self.client = client
        self.ttl_s = ttl_s

    @staticmethod
    def key(queue: str) -> str:
        return KEY_PREFIX + queue

    def mark(self, queues: Iterable[str], worker: str) -> None:
        """`worker` is ready for `queues` until `ttl_s` from now; entries past their time are dropped."""
        with redis_errors():
            now = now_of(self.client)
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.zadd(self.key(queue), {worker: now + self.ttl_s})
                pipe.zremrangebyscore(self.key(queue), "-inf", now)
                pipe.expire(self.key(queue), math.ceil(self.ttl_s) + 1)  # no refresh at all: no key
            pipe.execute()

    def unmark(self, queues: Iterable[str], worker: str) -> None:
        """`worker` stops (a clean shutdown): it is not ready from now on."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.zrem(self.key(queue), worker)
            pipe.execute()

    def ready(self, queues: Collection[str]) -> dict[str, list[str]]:
        """The workers ready now for each of `queues` (one round trip: Redis's time and every set)."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            pipe.info("server")
            for queue in queues:
                pipe.zrange(self.key(queue), 0, -1, withscores=True)
            replies = pipe.execute()
        now = _seconds(replies[0])
        started = started_at(now, replies[1])
        return {
            queue: sorted(
                _text(member)
                for member, until in entries
                if float(until) > now and float(until) - self.ttl_s >= started  # written since the start
            )
            for queue, entries in zip(queues, replies[2:], strict=True)
        }

    def missing(self, queues: Collection[str]) -> list[str]:
        """The queues, in the order given, that no worker is ready for."""
        ready = self.ready(queues)
        return [queue for queue in queues if not ready[queue]]


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


class Announcer:
    """One worker's entry kept alive by a daemon thread: marked at `start`, refreshed every `refresh_s`,
    removed at `stop`. Redis away: logged, and tried again at the next refresh (the entry may lapse).
    `when`: marked only while it holds (a prefork child waits for its siblings' warm-up, workers.warmup)."""

    def __init__(
        self,
        registry: ReadyWorkers,
        queues: Collection[str],
        worker: str,
        refresh_s: float = REFRESH_S,
        when: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = registry
        self.queues = tuple(queues)
        self.worker = worker
        self.refresh_s = refresh_s
        self.when = when
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._announced = False

    def start(self) -> None:
        self._refresh()
        self._thread = threading.Thread(target=self._loop, name="ready-announcer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self.registry.unmark(self.queues, self.worker)
        except Exception as exc:  # shutting down with Redis away: the entry lapses by itself
            log.warning("readiness of %s not withdrawn (it lapses by itself): %s", self.worker, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._refresh()

    def _refresh(self) -> None:
        if not self.when():
            return
        try:
            self.registry.mark(self.queues, self.worker)
        except Exception as exc:  # never let the thread die: the next refresh tries again
            log.warning("readiness of %s not refreshed: %s", self.worker, exc)
            return
        if not self._announced:
            self._announced = True
            log.info("ready for %s as %s", ", ".join(self.queues), self.worker)
