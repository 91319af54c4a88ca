"""Fan-out bookkeeping: which batches of an ingest job ended, and the job's running totals.

One Lua script per finished batch adds its counts and marks it done atomically, and only once: a
redelivered batch (at-least-once delivery) never counts twice, and exactly one batch sees the last one end.
"""

from __future__ import annotations

from typing import Any

from common.jobs import JobStore
from common.redis_client import redis_errors

_FINISH = """
if redis.call('sadd', KEYS[2], ARGV[1]) == 0 then return -1 end
redis.call('expire', KEYS[2], ARGV[6])
local p = cjson.decode(redis.call('hget', KEYS[1], 'progress'))
p.succeeded = (p.succeeded or 0) + tonumber(ARGV[2])
p.failed = (p.failed or 0) + tonumber(ARGV[3])
p.skipped = (p.skipped or 0) + tonumber(ARGV[4])
p.chunks = (p.chunks or 0) + tonumber(ARGV[5])
p.done = p.succeeded + p.failed + p.skipped
redis.call('hset', KEYS[1], 'progress', cjson.encode(p))
local done = redis.call('hincrby', KEYS[1], 'batches_done', 1)
local total = tonumber(redis.call('hget', KEYS[1], 'batches_total'))
if done == total then return 1 end
return 0
"""


class BatchLedger:
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self._finish = jobs.client.register_script(_FINISH)

    def start(self, job_id: str, batches: int, total: int) -> None:
        """Once per job: a redelivered coordinator must not reset the counts of batches already done."""
        if self.jobs.client.hexists(self.jobs.key(job_id), "batches_total"):
            return
        progress = {"done": 0, "total": total, "succeeded": 0, "failed": 0, "skipped": 0, "chunks": 0}
        self.jobs.write(job_id, {"batches_total": batches, "batches_done": 0, "progress": progress})

    def finish_batch(self, job_id: str, index: int, counts: dict[str, int]) -> bool:
        """Add a batch's counts once; True for the call that ended the job's last batch."""
        keys = [self.jobs.key(job_id), self.jobs.key(job_id) + ":batches"]
        args: list[Any] = [index] + [counts.get(k, 0) for k in ("succeeded", "failed", "skipped", "chunks")]
        with redis_errors():
            return int(self._finish(keys=keys, args=[*args, self.jobs.ttl_s])) == 1
