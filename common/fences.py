"""Deletes win over writes accepted before them, whatever order the workers run them in.

Every ingest and delete job gets a sequence number when the API accepts it (`next_seq`). A delete leaves a
tombstone with its number (per document, or for a whole collection); a batch accepted earlier that has not
written yet is refused by it, and the delete removes only rows written under earlier numbers (each chunk row
stores its job's number), so an upload accepted after the delete survives it.

A batch announces itself as a writer of its collection before it checks the tombstones, and a collection
delete writes its tombstone before it waits for the earlier writers to leave (`drain`): either the delete
sees the writer and waits for it, or the writer sees the tombstone and stops. Writers refresh their entry
with the worker's heartbeat, so one whose process died stops counting after `ttl_s`.

A batch also marks the documents it is about to write (`mark`) and clears them once their versions are
settled (`clear`): a mark left behind names a document whose write was cut short (a kill, Milvus gone), whose
stray rows the next writer prunes. Documents written for the first time need no prune otherwise (a Milvus
delete costs as much as the write).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import redis

from common.errors import ServiceUnavailable
from common.leases import Hold, check_holds
from common.redis_client import queue_script, redis_errors

SEQ_KEY = "quarry:seq"
# The highest number wins: a tombstone written late by a retried delete never lowers a newer one.
_TOMB = """
local current = tonumber(redis.call('get', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('set', KEYS[1], ARGV[1]) end
redis.call('expire', KEYS[1], ARGV[2])
return 1
"""
# Extends a writer entry only while it is there: a drain that found it expired removed it for good.
_EXTEND_WRITER = """
if not redis.call('zscore', KEYS[1], ARGV[1]) then return 0 end
redis.call('zadd', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


class Fences:
    """Sequence numbers, tombstones and the live writers of each collection."""

    def __init__(self, client: redis.Redis, ttl_s: int, writer_ttl_s: float) -> None:
        self.client = client
        self.ttl_s = ttl_s  # tombstones outlive every job accepted before them (the job TTL)
        self.writer_ttl_ms = max(1, int(writer_ttl_s * 1000))
        self._tomb = client.register_script(_TOMB)
        self._extend = client.register_script(_EXTEND_WRITER)
        self._writers: dict[str, tuple[str, Hold]] = {}  # member -> writers key and standing (heartbeat)
        self._lock = threading.Lock()

    @staticmethod
    def tomb_key(collection: str, doc_id: str | None = None) -> str:
        return "quarry:tomb:" + (_digest(collection) if doc_id is None else _digest(collection, doc_id))

    @staticmethod
    def writers_key(collection: str) -> str:
        return "quarry:writers:" + _digest(collection)

    @staticmethod
    def marks_key(collection: str) -> str:
        return "quarry:writing:" + _digest(collection)

    def mark(self, collection: str, doc_ids: Sequence[str]) -> None:
        """These documents are about to be written (kept until `clear`: no TTL, a lost mark is a leak)."""
        if doc_ids:
            with redis_errors():
                self.client.sadd(self.marks_key(collection), *doc_ids)

    def marked(self, collection: str, doc_ids: Sequence[str]) -> set[str]:
        """Which of these documents a write cut short may have left stray rows of."""
        if not doc_ids:
            return set()
        with redis_errors():
            flags = self.client.smismember(self.marks_key(collection), list(doc_ids))
        return {doc_id for doc_id, flag in zip(doc_ids, flags, strict=True) if flag}

    def clear(self, collection: str, doc_ids: Sequence[str]) -> None:
        """Their versions are settled."""
        if doc_ids:
            with redis_errors():
                self.client.srem(self.marks_key(collection), *doc_ids)

    def next_seq(self) -> int:
        with redis_errors():
            return int(self.client.incr(SEQ_KEY))

    def tombstone(self, collection: str, doc_ids: Sequence[str] | None, seq: int) -> None:
        """Refuse from now on every write of these documents (None: the collection) accepted before `seq`."""
        if doc_ids is None:
            keys = [self.tomb_key(collection)]
        else:
            keys = [self.tomb_key(collection, doc_id) for doc_id in doc_ids]
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                queue_script(pipe, self._tomb, [key], [seq, self.ttl_s])
            pipe.execute()

    def floors(self, collection: str, doc_ids: Sequence[str]) -> dict[str, int]:
        """Each document's latest delete (the higher of its own tombstone and its collection's; 0: none).

        A job numbered `seq` may write a document only when its floor is below `seq`; a stored version written
        below its floor is on its way out (the delete has not run yet), so it must not count as stored.
        """
        keys = [self.tomb_key(collection)] + [self.tomb_key(collection, d) for d in doc_ids]
        with redis_errors():
            values = [int(value or 0) for value in self.client.mget(keys)]
        return {doc_id: max(values[0], value) for doc_id, value in zip(doc_ids, values[1:], strict=True)}

    @contextmanager
    def writing(self, collection: str, seq: int, owner: str) -> Iterator[None]:
        """Count as a live writer of `collection` (check tombstones inside, not before)."""
        key, member = self.writers_key(collection), f"{seq}:{owner}"
        hold = Hold(f"writer entry in {collection!r}", self.writer_ttl_ms / 1000)
        with redis_errors():
            self.client.zadd(key, {member: self._expiry()})
            self.client.expire(key, self.ttl_s)
        with self._lock:
            self._writers[member] = (key, hold)
        try:
            yield
        finally:
            with self._lock:
                self._writers.pop(member, None)
            with redis_errors():
                self.client.zrem(key, member)

    def refresh(self) -> None:
        """Extend this process's writer entries (the worker's heartbeat calls this), and note which still
        stand (`common.leases`)."""
        with self._lock:
            held = dict(self._writers)
        if held:
            pipe = self.client.pipeline(transaction=False)
            for member, (key, _hold) in held.items():
                queue_script(pipe, self._extend, [key], [member, self._expiry()])
            sent_at = time.monotonic()
            with redis_errors():
                extended = pipe.execute()
            for (_key, hold), ok in zip(held.values(), extended, strict=True):
                hold.renewed(sent_at, bool(ok))

    def check(self) -> None:
        """Raise HoldLapsed unless every writer entry of this process still stands (before a write)."""
        with self._lock:
            holds = [hold for _key, hold in self._writers.values()]
        check_holds(holds)

    def drain(self, collection: str, seq: int, wait_s: float) -> None:
        """Wait until no live writer accepted before `seq` is left in `collection`."""
        key, deadline = self.writers_key(collection), time.monotonic() + wait_s
        while True:
            now_ms = int(time.time() * 1000)
            with redis_errors():
                self.client.zremrangebyscore(key, "-inf", now_ms)  # writers whose process died
                members = cast(list[bytes], self.client.zrange(key, 0, -1))
            if not any(int(member.split(b":", 1)[0]) < seq for member in members):
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable("earlier uploads are still writing to the collection; retrying")
            time.sleep(0.1)

    def _expiry(self) -> int:
        return int(time.time() * 1000) + self.writer_ttl_ms
