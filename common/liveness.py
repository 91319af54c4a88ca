"""Liveness of running tasks, kept in their job's record: heartbeats, delivery counts, requeues.

Workers write it; `JobStore.get` reads it back in the same round trip (`common.jobs.lost_worker`), so
a job whose worker vanished reads `failed` instead of `running` forever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from typing import Any

from common.jobs import BEAT_FIELD, JobStore, now_iso
from common.redis_client import redis_errors

# Only jobs that still exist: a beat must never recreate an expired record without its TTL.
_BEAT = """
if redis.call('exists', KEYS[1]) == 1 then redis.call('hset', KEYS[1], unpack(ARGV)) end
return 0
"""


class Liveness:
    def __init__(self, jobs: JobStore, timeout_s: float) -> None:
        self.jobs = jobs
        self.timeout_s = timeout_s
        self._beat = jobs.client.register_script(_BEAT)

    def beat(self, running: Mapping[str, Collection[str]], worker: dict[str, Any]) -> None:
        """Declare tasks ({job id: task ids}) alive for `timeout_s` more; one pipeline for all."""
        at = now_iso()
        value = json.dumps({"at": at, "until": time.time() + self.timeout_s, **worker})
        with redis_errors():
            pipe = self.jobs.client.pipeline(transaction=False)
            for job_id, task_ids in running.items():
                args: list[str] = ["heartbeat_at", json.dumps(at)]
                for task_id in task_ids:
                    args += [BEAT_FIELD + task_id, value]
                self._beat(keys=[self.jobs.key(job_id)], args=args, client=pipe)
            pipe.execute()

    def end(self, job_id: str, task_id: str) -> None:
        """The task ended (succeeded, failed or will retry): its silence from now on means nothing."""
        with redis_errors():
            self.jobs.client.hdel(self.jobs.key(job_id), BEAT_FIELD + task_id)

    def count_delivery(self, job_id: str, task_id: str, attempt: int) -> int:
        """How many times this attempt of the task has been delivered, this one included.

        A redelivered message (its worker died) keeps its attempt number; a Celery retry is a new attempt.
        Kept beside the record, not in it: a job of many batches must not make every status read heavy.
        """
        key = self.jobs.key(job_id) + ":deliveries"
        with redis_errors():
            pipe = self.jobs.client.pipeline(transaction=True)
            pipe.hincrby(key, f"{task_id}:{attempt}", 1)
            pipe.expire(key, self.jobs.ttl_s)
            delivery, _ = pipe.execute()
        return int(delivery)

    def requeued(self, job_id: str, task_id: str, reason: str) -> None:
        """The task's child process died and its message is back in the queue: waiting, not lost."""
        self.end(job_id, task_id)
        self.jobs.note_retry(job_id, f"{reason}; the task went back to the queue")
