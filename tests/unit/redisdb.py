"""The Redis of the unit tests whose Lua scripts must run on a real server: a database of its own on the
local server (QUARRY_TEST_REDIS_DB, default 15), of which each test removes only the keys it wrote."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('QUARRY_TEST_REDIS_DB', '15')}"


@contextmanager
def scratch_redis(*patterns: str, needed_for: str) -> Iterator[redis.Redis]:
    """A client of the test database; afterwards the keys matching `patterns` go (others may share it)."""
    conn = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        conn.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis on 127.0.0.1:6379 for {needed_for}")
    yield conn
    for pattern in patterns:
        for name in conn.scan_iter(pattern):
            conn.delete(name)
