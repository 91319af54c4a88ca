"""The one way Quarry opens a Milvus client: keepalive pings the server accepts, a channel of its own, and a
fresh channel (and one more try of a call that may run twice) when the old one broke.

pymilvus pings every 10 s, even on a connection without calls. A gRPC-core server left at its defaults, as the
milvus-lite 3.x server is (`grpc.server` with message sizes only), takes no ping on a connection without calls
(`grpc.keepalive_permit_without_calls` 0), at most one per 5 minutes while a call is in flight
(`grpc.http2.min_recv_ping_interval_without_data_ms` 300000) and answers the third ping too many
(`grpc.http2.max_ping_strikes` 2) with GOAWAY `too_many_pings`, which fails the calls in flight on that
connection. Milvus standalone and cluster (grpc-go) take a ping every 5 s, with or without calls. Pinging only
while a call is in flight, every 6 minutes, is inside both policies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from pymilvus import MilvusClient
from pymilvus.client import entity_helper
from pymilvus.exceptions import MilvusException

from common.errors import ServiceUnavailable
from common.retries import milvus_unavailable
from common.settings import Settings

log = logging.getLogger(__name__)

KEEPALIVE_OPTIONS: dict[str, int] = {
    "grpc.keepalive_time_ms": 360_000,  # over the 300 s a gRPC-core server wants between two pings
    "grpc.keepalive_timeout_ms": 20_000,  # a peer that does not answer a ping in 20 s is gone
    "grpc.keepalive_permit_without_calls": 0,  # a connection without calls is never pinged
}
# Reconnect within a second once Milvus is back: gRPC's reconnect backoff otherwise grows towards two
# minutes during an outage, and every retry of a task would fail long after Milvus returned.
RECONNECT_OPTIONS: dict[str, int] = {
    "grpc.initial_reconnect_backoff_ms": 250,
    "grpc.max_reconnect_backoff_ms": 1000,
}
# Connections of the channel's own: gRPC shares them among channels of equal options to one address, so a
# "fresh" channel opened after a GOAWAY sent its first call down the connection the GOAWAY was closing
# (pymilvus's own recovery failed so in `make bench`: UNAVAILABLE "Too many pings" on its Connect call).
OWN_CONNECTION: dict[str, int] = {"grpc.use_local_subchannel_pool": 1}
GRPC_OPTIONS: dict[str, int] = {**KEEPALIVE_OPTIONS, **RECONNECT_OPTIONS, **OWN_CONNECTION}
# Calls that may run twice: reads, upserts (by primary key), deletes by filter, flush and load. Not `insert`
# (auto ids would be written twice), `create_collection` or the stateful `query_iterator`.
RETRY_SAFE = frozenset(
    {
        "query",
        "get",
        "search",
        "hybrid_search",
        "has_collection",
        "describe_collection",
        "get_load_state",
        "get_server_version",
        "list_collections",
        "upsert",
        "delete",
        "flush",
        "load_collection",
    }
)
_BROKEN_HINTS = (
    "goaway",
    "too_many_pings",
    "unavailable",
    "fail connecting",
    "connection reset",
    "connection refused",
    "socket closed",
    "broken pipe",
    "keepalive",
)


def channel_broken(exc: BaseException) -> bool:
    """Whether `exc` says the channel is gone (a GOAWAY, a reset, a refused or failed reconnect), which a
    fresh channel may cure, rather than that the call itself was wrong."""
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        return callable(code) and code() == grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, MilvusException):
        return exc.code == grpc.StatusCode.UNAVAILABLE or any(
            hint in str(exc).lower() for hint in _BROKEN_HINTS
        )
    return isinstance(exc, ConnectionError)


class RecoveringClient:
    """A MilvusClient (every attribute is its) whose calls survive a broken channel.

    pymilvus mends a channel in place after UNAVAILABLE, but when that reconnect fails (the server is busy for
    longer than the connect timeout) the error escapes and the handler keeps the broken channel. Here a call
    that fails so opens a new client, and a call in RETRY_SAFE runs once more on it; others fail as before.
    """

    def __init__(self, open_client: Callable[[], Any]) -> None:
        self._open = open_client
        self._lock = threading.Lock()
        self._client = open_client()
        self._generation = 0  # how many times the client was replaced

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        generation = self._generation
        try:
            return getattr(self._client, name)(*args, **kwargs)
        except Exception as exc:
            # A call that failed while another thread replaced its client failed for that reason alone.
            if generation == self._generation and not channel_broken(exc):
                raise
            log.warning("Milvus channel broken during %s (%s); opening a fresh one", name, exc)
            self.renew(generation)
            if name not in RETRY_SAFE:
                raise
        return getattr(self._client, name)(*args, **kwargs)

    def renew(self, seen: int | None = None) -> None:
        """Replace the client by one on a new channel, unless another thread did so since `seen`."""
        with self._lock:
            if seen is not None and seen != self._generation:
                return
            fresh = self._open()  # raises while Milvus is unreachable; the old client is kept meanwhile
            old, self._client = self._client, fresh
            self._generation += 1
        _close_quietly(old)

    @property
    def generation(self) -> int:
        return self._generation

    def close(self) -> None:
        self._client.close()


def connect(
    target: Settings | str,
    *,
    token: str | None = None,
    timeout_s: float | None = None,
    grpc_options: Mapping[str, Any] | None = None,
) -> RecoveringClient:
    """A client on a channel of its own (pymilvus shares one per address otherwise, set up by whichever client
    came first, with its options and connect timeout), with GRPC_OPTIONS; `target` is the settings or a URI.

    `timeout_s` bounds connecting and reconnecting (settings: MILVUS_TIMEOUT_S); `grpc_options` override ours.
    """
    if isinstance(target, Settings):
        uri, token, timeout_s = target.milvus_uri, target.milvus_token, target.milvus_timeout_s
    else:
        uri = target
    options = {**GRPC_OPTIONS, **(grpc_options or {})}
    skip_row_string_walk()

    def open_client() -> Any:
        return MilvusClient(
            uri=uri, token=token or "", timeout=timeout_s, dedicated=True, grpc_options=options
        )

    return RecoveringClient(open_client)


def skip_row_string_walk() -> None:
    """Turn off pymilvus's check of a row's string fields: given one string where it expects a list of them,
    it walks the string's characters and checks each is a string no longer than the field (pymilvus 3.0.2,
    `entity_helper.convert_to_str_array` under `_pack_scalar_row`). It can catch nothing and took 0.3-0.4 s
    of the 1.5-1.7 s of upserting 1,000 SciFact documents' rows. The server checks every length itself (an
    over-long value is refused alike with the check on or off) and Quarry bounds each field first
    (`common.fields`). Only row writes are affected: Quarry writes no columns."""
    entity_helper.CHECK_STR_ARRAY = False


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception as exc:  # a broken channel may fail to close; it is dropped either way
        log.debug("closing a replaced Milvus client failed: %s", exc)


@contextmanager
def milvus_errors(action: str) -> Iterator[None]:
    """Map pymilvus failures to domain errors; only unreachability is retriable (`common.retries`)."""
    try:
        yield
    except MilvusException as exc:
        message = str(exc)
        if milvus_unavailable(message):
            raise ServiceUnavailable(f"Milvus unavailable during {action}: {message}") from exc
        raise
    except grpc.RpcError as exc:  # pymilvus passes some codes on raw, a missed deadline among them
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code is not None and milvus_unavailable(str(exc), code.name):
            raise ServiceUnavailable(f"Milvus unavailable during {action}: {code}") from exc
        raise
    except (ConnectionError, TimeoutError) as exc:
        raise ServiceUnavailable(f"Milvus unavailable during {action}: {exc}") from exc
