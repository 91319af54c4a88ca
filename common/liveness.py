"""Liveness of running tasks, kept in their job's record: heartbeats, delivery counts, requeues.

Workers write it; the sweeper hands the tasks of a worker that stopped beating to another
(`workers.handoff`), and `JobStore.get` reads it back in the same round trip (`common.beats.lost_worker`),
so a job whose work nothing could hand on reads `failed` instead of `running` forever.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from common.job_record import now_iso
from common.job_schema import BEAT_PREFIX, Field, JobKeys
from common.jobs import JobStore
from common.redis_client import queue_script, redis_errors

# Only jobs that still exist: a beat must never recreate an expired record without its TTL.
_BEAT = """
if redis.call('exists', KEYS[1]) == 1 then redis.call('hset', KEYS[1], unpack(ARGV)) end
return 0
"""

# One count per delivery, whatever happens to the reply: the workers' Redis client sends a command again
# when its reply was lost, and a plain HINCRBY repeated would count one delivery twice (and refuse a task
# one delivery early). The delivery's own token remembers the count it got.
_COUNT = """
local seen = redis.call('hget', KEYS[2], ARGV[2])
if seen then return tonumber(seen) end
local n = redis.call('hincrby', KEYS[1], ARGV[1], 1)
redis.call('hset', KEYS[2], ARGV[2], n)
redis.call('expire', KEYS[1], ARGV[3])
redis.call('expire', KEYS[2], ARGV[3])
return n
"""


class Liveness:
    def __init__(self, jobs: JobStore, timeout_s: float) -> None:
        self.jobs = jobs
        self.timeout_s = timeout_s
        self._beat = jobs.client.register_script(_BEAT)
        self._count = jobs.client.register_script(_COUNT)

    def beat(self, running: Mapping[str, Collection[str]], worker: dict[str, Any]) -> None:
        """Declare tasks ({job id: task ids}) alive for `timeout_s` more; one pipeline for all."""
        at = now_iso()
        value = json.dumps(
            {"at": at, "until": time.time() + self.timeout_s, "timeout": self.timeout_s, **worker}
        )
        with redis_errors():
            pipe = self.jobs.client.pipeline(transaction=False)
            for job_id, task_ids in running.items():
                args: list[str] = [Field.HEARTBEAT_AT, json.dumps(at)]
                for task_id in task_ids:
                    args += [BEAT_PREFIX + task_id, value]
                queue_script(pipe, self._beat, [self.jobs.key(job_id)], args)
            pipe.execute()

    def end(self, job_id: str, task_id: str) -> None:
        """The task ended (succeeded, failed or will retry): its silence from now on means nothing."""
        with redis_errors():
            self.jobs.client.hdel(self.jobs.key(job_id), BEAT_PREFIX + task_id)

    def count_delivery(self, job_id: str, task_id: str, attempt: int) -> int:
        """How many times this attempt of the task has been delivered, this one included.

        A redelivered message (its worker died) keeps its attempt number; a Celery retry is a new attempt.
        Kept beside the record, not in it: a job of many batches must not make every status read heavy.
        """
        keys = JobKeys(job_id)
        args: list[str | int] = [f"{task_id}:{attempt}", uuid.uuid4().hex, self.jobs.ttl_s]
        with redis_errors():
            return int(self._count(keys=[keys.deliveries, keys.delivery_tokens], args=args))

    def delivered_before(self, job_id: str, task_id: str, attempt: int) -> bool:
        """Whether this attempt of the task was delivered already (read before this delivery counts).

        Tells a vanished delivery (same attempt, its stale beat left behind) from a Celery retry (a new
        attempt) whose predecessor could not remove its beat because Redis was away.
        """
        with redis_errors():
            return bool(self.jobs.client.hexists(JobKeys(job_id).deliveries, f"{task_id}:{attempt}"))

    def requeued(self, job_id: str, task_id: str, reason: str) -> None:
        """The task's child process died and its message is back in the queue: waiting, not lost."""
        self.end(job_id, task_id)
        self.jobs.note_retry(job_id, f"{reason}; the task went back to the queue")
