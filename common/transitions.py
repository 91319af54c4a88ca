"""Atomic state moves of a job record: a job that ended stays ended.

Several processes write a job's state: the worker that runs it, the API that cancels it, a redelivered
message of a lost worker. A plain HSET lets the last writer win, so a worker starting a job the API had
just cancelled would reopen it, and its later success would overwrite `cancelled`. One Lua script checks
the current state and writes in the same step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import chain

import redis

_MOVE = """
local state = redis.call('hget', KEYS[1], 'state')
local n = tonumber(ARGV[2])
for i = 3, n + 2 do
  if state == ARGV[i] then
    redis.call('hset', KEYS[1], unpack(ARGV, n + 3))
    redis.call('expire', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
"""


class StateGuard:
    """`move` writes a job's fields only when its stored state is one of `allowed`."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_MOVE)  # no round trip: EVALSHA (or EVAL) on first use

    def move(self, key: str, ttl_s: int, allowed: Iterable[str], fields: dict[str, str]) -> bool:
        """`fields` are already encoded as the record stores them; True when they were written."""
        states = [json.dumps(state) for state in allowed]
        args: list[str | int] = [ttl_s, len(states), *states, *chain.from_iterable(fields.items())]
        return int(self._script(keys=[key], args=args)) == 1
