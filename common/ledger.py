"""Fan-out bookkeeping: which batches of an ingest job ended, and the job's running totals.

One Lua script per finished batch adds its counts and marks it done atomically, and only once: a
redelivered batch (at-least-once delivery) never counts twice.

A batch counted already gets the answer a first count would give now: "last" once every batch is done.
The workers' Redis client sends a script again when its reply was lost, and that repeat must still end
the job (answering "counted already" would leave it `running` until its TTL, without a webhook). So more
than one call may answer "last"; ending a job is guarded (`JobStore._finish`), the second end moves nothing.
"""

from __future__ import annotations

from typing import Any

from common.job_schema import FANNED_INDEX, Field, JobKeys, lua
from common.jobs import JobStore
from common.redis_client import redis_errors

_FINISH = lua("""
if redis.call('exists', KEYS[1]) == 0 then return -1 end
if redis.call('sadd', KEYS[2], ARGV[1]) == 0 then
  local done = tonumber(redis.call('hget', KEYS[1], '$batches_done'))
  if done == tonumber(redis.call('hget', KEYS[1], '$batches_total')) then return 1 end
  return -1
end
redis.call('expire', KEYS[2], ARGV[6])
local p = cjson.decode(redis.call('hget', KEYS[1], '$progress'))
p.succeeded = (p.succeeded or 0) + tonumber(ARGV[2])
p.failed = (p.failed or 0) + tonumber(ARGV[3])
p.skipped = (p.skipped or 0) + tonumber(ARGV[4])
p.chunks = (p.chunks or 0) + tonumber(ARGV[5])
p.done = p.succeeded + p.failed + p.skipped
redis.call('hset', KEYS[1], '$progress', cjson.encode(p))
redis.call('publish', ARGV[7], 'progress')
local done = redis.call('hincrby', KEYS[1], '$batches_done', 1)
local total = tonumber(redis.call('hget', KEYS[1], '$batches_total'))
if done == total then return 1 end
return 0
""")


class BatchLedger:
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self._finish = jobs.client.register_script(_FINISH)

    def start(self, job_id: str, batches: int, total: int) -> None:
        """Once per job: a redelivered coordinator must not reset the counts of batches already done."""
        if self.jobs.client.hexists(self.jobs.key(job_id), Field.BATCHES_TOTAL):
            return
        progress = {"done": 0, "total": total, "succeeded": 0, "failed": 0, "skipped": 0, "chunks": 0}
        self.jobs.write(
            job_id, {Field.BATCHES_TOTAL: batches, Field.BATCHES_DONE: 0, Field.PROGRESS: progress}
        )

    def planned(self, job_id: str) -> tuple[int | None, bool]:
        """How many batches the job's split wrote (None: it never finished), and whether all are queued.

        A coordinator delivered again (its process was killed) resumes from here instead of parsing the
        upload again: `start` marks the split done, `enqueued` marks the fan-out done.
        """
        with redis_errors():
            total, enqueued = self.jobs.client.hmget(
                self.jobs.key(job_id), [Field.BATCHES_TOTAL, Field.BATCHES_ENQUEUED]
            )
        return (None if total is None else int(total)), enqueued is not None

    def enqueued(self, job_id: str) -> None:
        # listed for workers.lost_batches
        self.jobs.write(job_id, {Field.BATCHES_ENQUEUED: True}, index=FANNED_INDEX)

    def counted(self, job_id: str, index: int) -> bool:
        """Whether a delivery of this batch already ended it (its counts are in the job's totals)."""
        with redis_errors():
            return bool(self.jobs.client.sismember(JobKeys(job_id).batches, str(index)))

    def finish_batch(self, job_id: str, index: int, counts: dict[str, int]) -> bool:
        """Add a batch's counts once; True when every batch of the job is counted (the job may end)."""
        job = JobKeys(job_id)
        keys = [job.record, job.batches]
        args: list[Any] = [index] + [counts.get(k, 0) for k in ("succeeded", "failed", "skipped", "chunks")]
        with redis_errors():
            return int(self._finish(keys=keys, args=[*args, self.jobs.ttl_s, job.events])) == 1
