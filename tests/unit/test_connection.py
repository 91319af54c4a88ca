"""store.connection without a server: the keepalive it asks for, which errors mean a broken channel, and the
fresh channel plus one more try after one."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from pymilvus import MilvusException

from common.errors import ServiceUnavailable
from common.settings import Settings
from store import connection
from store.connection import GRPC_OPTIONS, RecoveringClient, channel_broken, connect, milvus_errors

GOAWAY = MilvusException(
    message="<_MultiThreadedRendezvous: StatusCode.UNAVAILABLE, GOAWAY received; Debug Text: too_many_pings>"
)
FAILED_RECOVERY = MilvusException(
    code=2, message="Fail connecting to server on 127.0.0.1:19530, illegal connection params or server down"
)


class RawRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What grpc raises (an RpcError that is also a Call); pymilvus passes a few codes on like this."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Fake:
    """A MilvusClient whose `query` fails with the queued errors first."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors, self.calls, self.closed = errors, 0, False

    def query(self, name: str) -> list[str]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return [name]

    def insert(self, name: str) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    def close(self) -> None:
        self.closed = True


def opener(*clients: Fake) -> tuple[RecoveringClient, list[Fake]]:
    queue, opened = list(clients), []

    def open_client() -> Fake:
        opened.append(queue.pop(0))
        return opened[-1]

    return RecoveringClient(open_client), opened


def test_keepalive_is_inside_what_a_grpc_core_server_and_milvus_accept() -> None:
    # gRPC core (milvus-lite): no ping without calls, one per 300 s at most; grpc-go (Milvus): one per 5 s.
    assert GRPC_OPTIONS["grpc.keepalive_permit_without_calls"] == 0
    assert GRPC_OPTIONS["grpc.keepalive_time_ms"] > 300_000
    assert GRPC_OPTIONS["grpc.max_reconnect_backoff_ms"] <= 1000  # back within a second after an outage
    assert GRPC_OPTIONS["grpc.use_local_subchannel_pool"] == 1  # a fresh channel is a fresh connection


def test_connect_opens_a_dedicated_client_with_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(connection, "MilvusClient", lambda **kwargs: seen.append(kwargs) or Fake([]))
    settings = Settings(milvus_uri="http://milvus:19530", milvus_token="u:p", milvus_timeout_s=7)
    connect(settings)
    connect("http://other:19530", timeout_s=2, grpc_options={"grpc.keepalive_time_ms": 1000})
    assert seen[0] == {
        "uri": "http://milvus:19530",
        "token": "u:p",
        "timeout": 7,
        "dedicated": True,
        "grpc_options": GRPC_OPTIONS,
    }
    assert seen[1]["dedicated"] and seen[1]["timeout"] == 2 and seen[1]["token"] == ""
    assert seen[1]["grpc_options"] == {**GRPC_OPTIONS, "grpc.keepalive_time_ms": 1000}


@pytest.mark.parametrize(
    ("error", "broken"),
    [
        (GOAWAY, True),
        (FAILED_RECOVERY, True),
        (RawRpcError(grpc.StatusCode.UNAVAILABLE), True),
        (ConnectionResetError(), True),
        (RawRpcError(grpc.StatusCode.INVALID_ARGUMENT), False),
        (MilvusException(message="collection not found[collection=quarry_chunks]"), False),
        (ValueError("bad filter"), False),
    ],
)
def test_which_errors_mean_a_broken_channel(error: Exception, broken: bool) -> None:
    assert channel_broken(error) is broken


@pytest.mark.parametrize("error", [GOAWAY, FAILED_RECOVERY])
def test_a_read_on_a_broken_channel_runs_again_on_a_fresh_client(error: Exception) -> None:
    first, second = Fake([error]), Fake([])
    client, opened = opener(first, second)
    assert client.query("c") == ["c"]
    assert opened == [first, second] and first.closed and not second.closed
    assert (first.calls, second.calls, client.generation) == (1, 1, 1)


def test_a_call_that_may_not_run_twice_gets_a_fresh_client_but_fails() -> None:
    first, second = Fake([GOAWAY]), Fake([])
    client, opened = opener(first, second)
    with pytest.raises(MilvusException, match="too_many_pings"):
        client.insert("c")  # auto ids: a second run could write the rows twice
    assert opened == [first, second] and second.calls == 0
    client.insert("c")
    assert second.calls == 1


def test_an_error_of_the_call_itself_keeps_the_client() -> None:
    first = Fake([MilvusException(message="collection not found")])
    client, opened = opener(first)
    with pytest.raises(MilvusException, match="not found"):
        client.query("c")
    assert opened == [first] and client.generation == 0 and first.calls == 1


def test_while_milvus_is_down_the_old_client_is_kept_and_the_error_stays_retriable() -> None:
    first = Fake([GOAWAY])
    clients = iter([first])

    def open_client() -> Fake:
        for client in clients:
            return client
        raise FAILED_RECOVERY  # what pymilvus raises when nothing answers

    client = RecoveringClient(open_client)
    with pytest.raises(ServiceUnavailable, match="Fail connecting"), milvus_errors("query"):
        client.query("c")
    assert client.generation == 0 and not first.closed
    assert client.query("c") == ["c"]  # Milvus back: the same client answers


def test_threads_that_saw_the_same_broken_channel_renew_it_once() -> None:
    client, opened = opener(Fake([]), Fake([]), Fake([]))
    barrier = threading.Barrier(4)

    def renew() -> None:
        barrier.wait()
        client.renew(seen=0)

    threads = [threading.Thread(target=renew) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.generation == 1 and len(opened) == 2


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_raw_grpc_unreachability_is_retriable(code: grpc.StatusCode) -> None:
    with pytest.raises(ServiceUnavailable), milvus_errors("search"):
        raise RawRpcError(code)
    with pytest.raises(RawRpcError), milvus_errors("search"):
        raise RawRpcError(grpc.StatusCode.INVALID_ARGUMENT)
