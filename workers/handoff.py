"""Hands the tasks of a vanished worker to a live one at once, from the parse workers' sweeper (Redis broker).

A worker that vanishes whole (its host lost, `kill -9` of its main process) leaves the messages of its
running tasks unacknowledged in the broker's `unacked` hash. Redis hands such a message back only after the
visibility timeout, which must outlast the longest task (`TASK_TIME_LIMIT_S` + 600 s by default), so
meanwhile the job would read `failed` (worker lost) although another host could run it. The tasks' heartbeats
say sooner and more precisely that the worker stopped: every `JOB_HEARTBEAT_INTERVAL_S` a sweep reads the
running jobs (`RUNNING_INDEX`), and for each task whose beat is past its deadline (`common.beats.stale_beats`,
never one from before a Redis restart) and whose message is in `unacked`:

1. drops the stale beat, only if it is still the same value (a Lua compare-and-delete): a worker that beat
   again meanwhile is alive, and of two sweepers only one wins;
2. puts the message back at the head of its queue through kombu's own restore (`QoS.restore_by_tag`, one
   transaction on the `unacked` hash, so the message is queued once), marked redelivered;
3. notes on the job that its task went to another worker.

The next worker to take it (any host) runs it as a redelivery: counted (`MAX_DELIVERIES`, so a task that
kills every worker still ends), a batch takes over its lease and document locks once their heartbeat TTL ran
out, and its writes are idempotent (workers.reconciler says why). A job reads lost only when its beat stays
stale a whole timeout more (`common.beats.lost_worker`), i.e. when nothing could be handed on.

With RabbitMQ the broker requeues a consumer's unacknowledged messages itself when its connection drops,
so this sweep is off there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from kombu.connection import Connection
from kombu.transport.redis import Channel

from common.beats import stale_beats
from common.job_schema import BEAT_PREFIX, RUNNING_INDEX, JobKeys
from common.redis_client import started_at
from workers.reconciler import unacked_task_id

log = logging.getLogger(__name__)

SCAN_LIMIT = 1000  # running jobs read per sweep (oldest first): bounds a sweep whatever the load
Restore = Callable[[str], None]  # a delivery tag of `unacked` back to its queue
Note = Callable[[str, str], None]  # (job id, what happened) into the job's record

# Drops a beat only if it is the value the sweep judged stale.
DROP_BEAT = """
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('hdel', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Stale:
    record: str  # the job's record key
    task_id: str
    value: bytes  # the beat as stored
    beat: dict[str, Any]

    @property
    def job_id(self) -> str:
        return JobKeys.of_record(self.record).job_id


def unacked_tags(entries: Mapping[Any, Any]) -> dict[str, str]:
    """{task id: delivery tag} of the `unacked` hash (values: JSON [message, exchange, routing key])."""
    tags = {}
    for tag, raw in entries.items():
        task_id = unacked_task_id(raw)
        if task_id:  # else not a Celery message: not ours to hand on
            tags[task_id] = tag.decode() if isinstance(tag, bytes) else str(tag)
    return tags


def stale_tasks(records: Mapping[str, dict[bytes, bytes]], now: float, up_since: float) -> list[Stale]:
    """The tasks of running jobs whose beats are past their deadlines."""
    return [
        Stale(key, task_id, value, beat)
        for key, raw in records.items()
        for task_id, (value, beat) in stale_beats(raw, now, up_since=up_since).items()
    ]


def restorer(connect: Callable[[], Connection]) -> Restore:
    """Puts a delivery tag's message back at the head of its queue with kombu's own restore (one
    transaction on `unacked`: a tag restored twice is queued once), through a connection from `connect`."""

    def restore(tag: str) -> None:
        with connect() as connection:
            connection.default_channel.qos.restore_by_tag(tag, leftmost=False)  # BRPOP takes it next

    return restore


class Handoff:
    """One per sweeper thread."""

    def __init__(self, jobs: redis.Redis, broker: redis.Redis, restore: Restore, note: Note) -> None:
        self.jobs, self.broker, self.restore, self.note = jobs, broker, restore, note
        self._drop = jobs.register_script(DROP_BEAT)

    def sweep(self, now: float) -> list[str]:
        """Hand on every task whose worker stopped beating; the ids of those handed on."""
        records = self._running()
        if not stale_tasks(records, now, up_since=0.0):
            return []  # the common case: one ZRANGE and the running jobs' reads
        stale = stale_tasks(records, now, started_at(now, self.jobs.info("server")))
        tags = unacked_tags(self.broker.hgetall(Channel.unacked_key)) if stale else {}
        handed = []
        for task in stale:
            tag = tags.get(task.task_id)
            if tag is None:
                continue  # requeued already (its child died), or taken again: nothing to hand on
            if not self._drop(keys=[task.record], args=[BEAT_PREFIX + task.task_id, task.value]):
                continue  # it beat again (alive after all), or another sweeper handed it on
            self.restore(tag)
            host, pid = task.beat.get("host"), task.beat.get("pid")
            self.note(
                task.job_id,
                f"worker lost: no heartbeat since {task.beat.get('at')} from {host} (pid {pid}); "
                "its task went back to the queue for another worker",
            )
            log.warning(
                "task %s of job %s: its worker %s stopped beating; handed on", task.task_id, task.job_id, host
            )
            handed.append(task.task_id)
        return handed

    def _running(self) -> dict[str, dict[bytes, bytes]]:
        keys = [
            k.decode() if isinstance(k, bytes) else str(k)
            for k in self.jobs.zrange(RUNNING_INDEX, 0, SCAN_LIMIT - 1)
        ]
        pipe = self.jobs.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return dict(zip(keys, pipe.execute(), strict=True)) if keys else {}
