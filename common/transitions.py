"""Atomic state moves of a job record: a job that ended stays ended.

Several processes write a job's state: the worker that runs it, the API that cancels it, a redelivered
message of a lost worker. A plain HSET lets the last writer win, so a worker starting a job the API had
just cancelled would reopen it, and its later success would overwrite `cancelled`. One Lua script checks
the current state and writes in the same step.

Each move carries a token of its own, stored with the fields it writes. The workers' Redis client sends a
command again when its reply was lost (`common.redis_client.connect_redis_patient`): the repeat then finds
the state it wrote itself, no longer an allowed one, and without the token would answer "not moved", so
its caller would skip the job's end event and webhook. With it, the repeat recognises its own write.

The same step takes a job that leaves `queued` out of the index of queued jobs
(`common.job_schema.QUEUED_INDEX`, read by `workers.reconciler`), so the index never lists a job that
started or ended (ZREM is idempotent under a repeat too); keeps the index of running jobs
(`RUNNING_INDEX`, by when each started; entries older than the TTL leave it), and counts each end once
by kind and state (`quarry_jobs_ended_total`: the move into an end happens once per job).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from itertools import chain

import redis

from common.job_schema import QUEUED_INDEX, RUNNING_INDEX, Field, lua
from common.metrics import JOBS_ENDED

_MOVE = lua("""
if redis.call('hget', KEYS[1], ARGV[2]) == ARGV[3] then return 1 end
local state = redis.call('hget', KEYS[1], '$state')
local n = tonumber(ARGV[4])
for i = 5, n + 4 do
  if state == ARGV[i] then
    redis.call('hset', KEYS[1], ARGV[2], ARGV[3], unpack(ARGV, n + 5))
    redis.call('expire', KEYS[1], ARGV[1])
    local now = redis.call('hget', KEYS[1], '$state')
    if now ~= '"queued"' then
      redis.call('zrem', KEYS[2], KEYS[1])
    end
    local t = tonumber(redis.call('time')[1])
    if now == '"running"' then
      redis.call('zadd', KEYS[3], t, KEYS[1])
    else
      redis.call('zrem', KEYS[3], KEYS[1])
    end
    redis.call('zremrangebyscore', KEYS[3], '-inf', '(' .. (t - tonumber(ARGV[1])))
    if now ~= state and (now == '"succeeded"' or now == '"failed"' or now == '"cancelled"') then
      local kind = cjson.decode(redis.call('hget', KEYS[1], '$kind') or '""')
      redis.call('hincrbyfloat', KEYS[4], cjson.encode({kind, cjson.decode(now), 'value'}), 1)
    end
    return 1
  end
end
return 0
""")


class StateGuard:
    """`move` writes a job's fields only when its stored state is one of `allowed`."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_MOVE)  # no round trip: EVALSHA (or EVAL) on first use

    def move(self, key: str, ttl_s: int, allowed: Iterable[str], fields: dict[str, str]) -> bool:
        """`fields` are already encoded as the record stores them; True when they were written (also when
        this call's first try wrote them and only its reply was lost)."""
        states = [json.dumps(state) for state in allowed]
        token = json.dumps(uuid.uuid4().hex)
        args: list[str | int] = [
            ttl_s,
            Field.LAST_MOVE,  # the token of the latest move written (JSON, like every field)
            token,
            len(states),
            *states,
            *chain.from_iterable(fields.items()),
        ]
        keys = [key, QUEUED_INDEX, RUNNING_INDEX, JOBS_ENDED.key]
        return int(self._script(keys=keys, args=args)) == 1
