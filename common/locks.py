"""Per-document locks, so two jobs ingesting the same document at once never both embed it."""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from common.errors import ServiceUnavailable
from common.jobs import redis_errors

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class DocumentLocks:
    """All-or-nothing acquisition with jittered retries (no lock is held while waiting: no deadlock)."""

    def __init__(self, client: redis.Redis, ttl_s: int, wait_s: float) -> None:
        self.client = client
        self.ttl_ms = ttl_s * 1000
        self.wait_s = wait_s

    @staticmethod
    def key(collection: str, doc_id: str) -> str:
        digest = hashlib.sha256(f"{collection}\x00{doc_id}".encode()).hexdigest()[:32]
        return f"quarry:lock:{digest}"

    @contextmanager
    def hold(self, collection: str, doc_ids: Sequence[str]) -> Iterator[None]:
        keys = sorted({self.key(collection, doc_id) for doc_id in doc_ids})
        token = uuid.uuid4().hex
        try:
            self._acquire(keys, token)
            yield
        finally:
            self._release(keys, token)

    def _acquire(self, keys: list[str], token: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, token, nx=True, px=self.ttl_ms)
            with redis_errors():
                acquired = pipe.execute()
            if all(acquired):
                return
            self._release(keys, token)
            if time.monotonic() > deadline:
                raise ServiceUnavailable("documents are being ingested by another job; retrying later")
            time.sleep(random.uniform(0.05, 0.3))

    def _release(self, keys: list[str], token: str) -> None:
        if keys:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.eval(_RELEASE, 1, key, token)
            with redis_errors():
                pipe.execute()
