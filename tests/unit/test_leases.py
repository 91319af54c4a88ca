"""A worker's holds in Redis (document locks, leases, writer entries) as the worker knows them, on a real
Redis: a hold that expired or went to another holder while Redis was away stops the next write to Milvus
(`Runtime.write_turn`) instead of letting two workers write the same documents at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from common.fences import Fences
from common.leases import WRITE_BUDGET, Hold, HoldLapsed, check_holds
from common.locks import DocumentLocks
from common.settings import Settings
from tests.unit.redisdb import REDIS_URL, scratch_redis


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    patterns = ("quarry:lock:*", "quarry:writers:*", "quarry:milvus-writes:*")
    with scratch_redis(*patterns, needed_for="the lock scripts") as conn:
        yield conn


def test_a_hold_stands_while_it_is_confirmed_and_lapses_for_good_once_redis_says_it_is_gone() -> None:
    now = time.monotonic()
    hold = Hold("document locks", ttl_s=8, confirmed=now)
    check_holds([hold])
    old = Hold("document locks", ttl_s=8, confirmed=now - 8 * (1 - WRITE_BUDGET) - 0.1)
    with pytest.raises(HoldLapsed, match=r"last confirmed 6\.\d s ago \(TTL 8 s"):
        check_holds([hold, old])
    old.renewed(time.monotonic(), held=True)
    check_holds([hold, old])  # confirmed again in time: it stands
    old.renewed(time.monotonic(), held=False)
    old.renewed(time.monotonic(), held=True)  # a later answer cannot undo "taken over"
    with pytest.raises(HoldLapsed, match="taken over or expired"):
        check_holds([old])


def test_a_lock_taken_by_another_while_redis_was_away_stops_its_first_holder(client: redis.Redis) -> None:
    collection = "c-" + uuid.uuid4().hex
    first = DocumentLocks(client, ttl_s=30, wait_s=1)
    second = DocumentLocks(client, ttl_s=30, wait_s=1)
    key = DocumentLocks.key(collection, "d")
    with first.hold(collection, ["d"]):
        first.check()
        client.delete(key)  # what a TTL that ran out during a Redis outage leaves
        with second.hold(collection, ["d"], owner="second"):
            first.refresh()
            second.refresh()
            with pytest.raises(HoldLapsed, match="document locks was taken over or expired"):
                first.check()
            second.check()  # the new holder stands
        client.set(key, "third")  # another holder again: the first one's release must leave it alone
    assert client.get(key) == b"third"


def test_a_lease_not_confirmed_for_most_of_its_ttl_stops_writes_until_it_is_renewed(
    client: redis.Redis,
) -> None:
    locks = DocumentLocks(client, ttl_s=1, wait_s=1)
    key = "quarry:lock:lease-" + uuid.uuid4().hex
    assert locks.take(key, "me", 1)
    time.sleep(1 - WRITE_BUDGET + 0.05)  # Redis away: no renewal arrives in time (the key still lives)
    with pytest.raises(HoldLapsed, match=f"hold of {key} was last confirmed"):
        locks.check()
    locks.refresh()  # Redis answers again and the key was still ours
    locks.check()
    locks.give_back(key, "me")
    assert client.get(key) is None


def test_a_drained_writer_entry_stops_its_writer_and_is_not_written_back(client: redis.Redis) -> None:
    collection = "c-" + uuid.uuid4().hex
    fences = Fences(client, ttl_s=60, writer_ttl_s=30)
    with fences.writing(collection, 5, owner="batch"):
        fences.refresh()
        fences.check()
        client.zrem(Fences.writers_key(collection), "5:batch")  # a delete's drain found it expired
        fences.refresh()
        assert client.zscore(Fences.writers_key(collection), "5:batch") is None
        with pytest.raises(HoldLapsed, match=f"writer entry in '{collection}' was taken over or expired"):
            fences.check()


def test_a_write_turn_refuses_to_send_a_request_under_a_lapsed_lock(client: redis.Redis) -> None:
    from workers.runtime import Runtime  # noqa: PLC0415 - the worker's app, only for this test

    rt = Runtime(Settings(redis_url=REDIS_URL, milvus_serial_writes=True, _env_file=None))  # type: ignore[call-arg]
    collection, sent = "c-" + uuid.uuid4().hex, []
    with rt.locks.hold(collection, ["d"]):
        with rt.write_turn():
            sent.append("while held")
        client.delete(DocumentLocks.key(collection, "d"))
        rt.locks.refresh()
        with pytest.raises(HoldLapsed), rt.write_turn():
            sent.append("after it lapsed")
    assert sent == ["while held"]
    assert client.get(rt.milvus_writes.key) is None  # the refused request gave its turn back
