"""The registry of collection names in Redis: the API adds a name when it accepts an upload into it and
removes it with the collection; ask workers read it at start to warm each collection's token IDF."""

from __future__ import annotations

from typing import cast

import redis

from common.redis_client import redis_errors


class CollectionNames:
    """Names of the collections clients have written to (counts always come from Milvus)."""

    KEY = "quarry:collections"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def add(self, name: str) -> None:
        with redis_errors():
            self.client.sadd(self.KEY, name)

    def remove(self, name: str) -> None:
        with redis_errors():
            self.client.srem(self.KEY, name)

    def names(self) -> set[str]:
        with redis_errors():
            raw = cast(set[bytes], self.client.smembers(self.KEY))  # the client does not decode
        return {item.decode() for item in raw}
