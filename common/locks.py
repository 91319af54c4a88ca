"""Per-document locks, so two jobs ingesting the same document at once never both embed it; and leases,
so two deliveries of one batch never run it at once.

Locks live `ttl_s` and the worker's heartbeat extends the ones it holds (`refresh`), so the locks of a
worker that vanished expire soon. A batch locks under its own name (`owner`): when its child process
is killed and the batch is delivered again, the new delivery takes its predecessor's locks over at once.
That is safe only because a batch runs in one delivery at a time: its lease (`take`, one key, a token per
delivery) keeps a second copy of its message (a broker restoring it past its visibility timeout, the
reconciler sending it again) waiting until the first delivery ends or dies.

`SerialWrites` takes a lease the same way for each write request to Milvus, so one runs at a time.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from common.errors import ServiceUnavailable
from common.leases import Hold, check_holds
from common.redis_client import queue_script, redis_errors
from common.retries import LOCK_POLL_S, WRITE_POLL_S

_ACQUIRE = """
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class DocumentLocks:
    """All-or-nothing acquisition with jittered retries (no lock is held while waiting: no deadlock)."""

    def __init__(self, client: redis.Redis, ttl_s: float, wait_s: float) -> None:
        self.client = client
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.wait_s = wait_s
        self._held: dict[str, tuple[list[str], str, Hold]] = {}  # per hold: its keys, token and standing
        self._held_lock = threading.Lock()
        # Queued in pipelines by source (`queue_script`): a Redis restarted mid-send has no cached scripts
        self._acquire_one = client.register_script(_ACQUIRE)
        self._release_one = client.register_script(_RELEASE)
        self._extend_one = client.register_script(_EXTEND)

    @staticmethod
    def key(collection: str, doc_id: str) -> str:
        digest = hashlib.sha256(f"{collection}\x00{doc_id}".encode()).hexdigest()[:32]
        return f"quarry:lock:{digest}"

    @contextmanager
    def hold(self, collection: str, doc_ids: Sequence[str], owner: str | None = None) -> Iterator[None]:
        """Hold the documents' locks; `owner` names a holder that outlives a process (a batch)."""
        keys = sorted({self.key(collection, doc_id) for doc_id in doc_ids})
        token, handle = owner or uuid.uuid4().hex, uuid.uuid4().hex
        try:
            sent_at = self._acquire(keys, token, self.wait_s)
            if sent_at is None:
                raise ServiceUnavailable("documents are being ingested by another job; retrying later")
            with self._held_lock:
                self._held[handle] = (keys, token, self._hold("document locks", sent_at))
            yield
        finally:
            with self._held_lock:
                self._held.pop(handle, None)
            self._release(keys, token)

    def take(self, key: str, token: str, wait_s: float, poll_s: tuple[float, float] = LOCK_POLL_S) -> bool:
        """Hold `key` for `token` until `give_back` (refreshed like the locks); False when another token
        kept it for `wait_s`, asking again every `poll_s` (jittered). Taking a key one holds succeeds."""
        sent_at = self._acquire([key], token, wait_s, poll_s)
        if sent_at is None:
            return False
        with self._held_lock:
            self._held[f"{key}\x00{token}"] = ([key], token, self._hold(f"hold of {key}", sent_at))
        return True

    def give_back(self, key: str, token: str) -> None:
        """Release `key` if `token` still holds it (also for a holder in a process that died)."""
        with self._held_lock:
            self._held.pop(f"{key}\x00{token}", None)
        self._release([key], token)

    def refresh(self) -> None:
        """Extend every lock this process holds by `ttl_s` (the worker's heartbeat calls this), and note
        which still stand (`common.leases`)."""
        with self._held_lock:
            held = list(self._held.values())
        if held:
            pipe = self.client.pipeline(transaction=False)
            for keys, token, _hold in held:
                for key in keys:
                    queue_script(pipe, self._extend_one, [key], [token, self.ttl_ms])
            sent_at = time.monotonic()
            with redis_errors():
                extended = iter(pipe.execute())
            for keys, _token, hold in held:
                hold.renewed(sent_at, all([next(extended) for _key in keys]))

    def check(self) -> None:
        """Raise HoldLapsed unless every lock and lease of this process still stands (before a write)."""
        with self._held_lock:
            holds = [hold for _keys, _token, hold in self._held.values()]
        check_holds(holds)

    def _hold(self, what: str, sent_at: float) -> Hold:
        return Hold(what, self.ttl_ms / 1000, confirmed=sent_at)

    def _acquire(
        self, keys: list[str], token: str, wait_s: float, poll_s: tuple[float, float] = LOCK_POLL_S
    ) -> float | None:
        """When (monotonic) the attempt that took every key was sent; None when `wait_s` ran out."""
        deadline = time.monotonic() + wait_s
        while True:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                queue_script(pipe, self._acquire_one, [key], [token, self.ttl_ms])
            sent_at = time.monotonic()
            with redis_errors():
                acquired = pipe.execute()
            if all(acquired):
                return sent_at
            self._release([key for key, got in zip(keys, acquired, strict=True) if got], token)
            if time.monotonic() > deadline:
                return None
            time.sleep(random.uniform(*poll_s))

    def _release(self, keys: list[str], token: str) -> None:
        if keys:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                queue_script(pipe, self._release_one, [key], [token])
            with redis_errors():
                pipe.execute()


class SerialWrites:
    """One write request at a time to one Milvus collection, from every process and host (setting
    MILVUS_SERIAL_WRITES): the milvus-lite server runs requests on a thread pool, and its engine takes no
    lock for writes. Measured against it: writers in three processes, each on documents of its own, lost
    prunes and deletes (two versions, or a deleted one, read back after the call returned) and had flushes
    refused ("current_seq is monotonic"); with their writes taking turns, none in as many calls. Milvus
    standalone and cluster take concurrent writes.

    A thread lock orders this process's threads (they share the lease's token); the lease orders processes.
    The heartbeat refreshes it like a document lock, so the turn of a process killed mid-write passes on only
    when its heartbeat timeout runs out, long after a request it had sent has run in the server.
    """

    def __init__(self, locks: DocumentLocks, target: str, wait_s: float) -> None:
        self.locks = locks
        self.key = "quarry:milvus-writes:" + hashlib.sha256(target.encode()).hexdigest()[:32]
        self.wait_s = wait_s
        self._local = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the collection's write turn for one request; ServiceUnavailable after `wait_s` (retried)."""
        if not self._local.acquire(timeout=self.wait_s):
            raise ServiceUnavailable("writes to Milvus are queued up in this process; retrying later")
        try:
            token = f"{socket.gethostname()}:{os.getpid()}"
            if not self.locks.take(self.key, token, self.wait_s, WRITE_POLL_S):
                raise ServiceUnavailable("another worker's write to Milvus is taking long; retrying later")
            try:
                yield
            finally:
                self.locks.give_back(self.key, token)
        finally:
            self._local.release()
