"""kombu's Redis transport, with one fix: a worker survives a Redis broker killed while it holds messages.

Why (celery 5.7.0 + kombu 5.7.0, Redis killed or restarted under a worker with unacknowledged messages and a
free pool slot, i.e. a BRPOP waiting): Celery's consumer handles the lost connection with
`Connection.collect()` and then `Connection.close()` (`Consumer.on_connection_error_after_connected`; 5.6 did
only the first). In `collect()`, the consumer channel's `close()` reads the pending BRPOP reply first, that
read raises ConnectionError before the channel marks itself closed, and another channel's close raises too,
so `collect()` ends with the consumer channel still open and its transport detached (`transport.client =
None`). The `close()` that follows closes that channel for real: it restores its unacknowledged messages
through a new Redis pool built from `transport.client`, i.e. from None, and raises AttributeError. Celery's
`ignore_errors` lets only connection errors pass, so the worker dies ("Unrecoverable error:
AttributeError("'NoneType' object has no attribute 'hostname'")"); a prefork worker with an idle child does
the same. No kombu release fixes it (5.7.0 is the newest) and no broker option avoids it; celery 5.6.3 avoids
it (no second close) but would give up 5.7's other connection-loss fixes (bounded socket reads in `collect`,
the failed connection's timers cancelled), so the pin stays.

The fix is the narrowest one: a channel whose connection is gone says so with a connection error, which
every caller on that path already handles (the consumer reconnects; an acknowledgement is logged as failed).
The messages it could not restore stay in the broker's unacked set and are delivered again after the
visibility timeout, exactly as when Redis is still down while the channel restores them.

Upstream: the double close arrived with celery 5.7.0's `on_connection_error_after_connected`
(https://github.com/celery/celery, celery/worker/consumer/consumer.py); the same AttributeError from a
detached transport was reported before for other close paths: https://github.com/celery/kombu/issues/582.
Drop this module (and `broker_transport` in celeryconfig.py) once a release closes a channel whose BRPOP
read fails, or guards `_connparams`; tests/integration/test_broker_restart.py says when.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):  # type: ignore[misc]  # kombu ships no type hints
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            raise RedisConnectionError("the broker connection of this channel is closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """Celery's `redis://` transport with `Channel` above; `driver_type` stays 'redis' for Celery's checks."""

    Channel = Channel
