"""Sends again the message of a queued job that the Redis broker lost, from the parse workers' sweeper.

Why a message can vanish: kombu's Redis transport takes a message with BRPOP (which removes it from the
queue list) and records it in its `unacked` hash only afterwards, with a second command from the worker's
event loop. Redis killed in between (or the worker, or just their connection: the popped reply is still in
the socket) leaves the message in no Redis structure; nothing delivers it again and its job would stay
`queued` forever. A job recorded by an API process killed before it sent the message is the same case.

How it is found without scanning the keyspace: `JobStore.create` lists each job in `QUEUED_INDEX` (a sorted
set of record keys by when the message was sent), and the state move that starts or ends the job removes it
in the same script (`common.transitions`). Each sweep reads the oldest entries older than `requeue_after_s`;
only when there are some does it read the broker: the job's queue list(s) and the `unacked` hash, in one
MULTI (one instant). A job is sent again when its record is still `queued`, no delivery of it was counted
(`<job>:deliveries`), and its task id is in neither, in two sweeps in a row: between BRPOP and its HSET a
message is in neither for a moment (longer while a worker's event loop is busy), and a second look one sweep
later sees it recorded by then. The re-send is claimed by moving the job's index score to now (a Lua
compare-and-set): only one sweeper sends, and the job is looked at again only `requeue_after_s` later.

Why a re-send that races a late original is harmless: both carry the job id as task id. `JobTask.before_start`
ignores a message of an ended job (`unless_ended`), and `mark_running` never reopens an end; two deliveries
that both start are counted (`<job>:deliveries`; past `max_deliveries` the task fails rather than loops). The
work is idempotent: the first end is final (`JobStore._finish`, one end event and webhook); a second ingest
coordinator reuses the split and sends nothing once `batches_enqueued` is set (`common.ledger`), and a batch
run twice is counted once and writes the same primary keys under document locks; asks only read; deletes
delete the same rows.

Redis broker only: with RabbitMQ a message stays in its queue until a worker acknowledges it, so the gap
cannot occur, and its queues cannot be read this way; the sweep is then off (`for_settings` returns None).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu.transport.redis import Channel

from common.contracts import JOB_TASKS, TASK_QUEUES
from common.job_schema import QUEUED_INDEX, Field, JobKeys
from common.messages import queue_lists
from common.redis_client import connect_redis
from common.settings import Settings

log = logging.getLogger(__name__)

SCAN_LIMIT = 100  # oldest queued jobs looked at per sweep: bounds a sweep's reads whatever the backlog
QUEUED = json.dumps("queued")  # how a record stores the state (JSON, like every field)

# Claims a re-send: only if the job is still listed with its old score (not started, not claimed by another
# sweeper meanwhile) does its score move to now.
CLAIM = """
local score = redis.call('zscore', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('zadd', KEYS[1], 'XX', ARGV[3], ARGV[1])
  return 1
end
return 0
"""

Send = Callable[[str, str | None, dict[str, Any]], None]  # (task name, task id or None: a new one, kwargs)


@dataclass(frozen=True)
class Candidate:
    """What a sweep reads of a job listed as queued for a while."""

    key: str  # the record's key, the index's member
    state: bytes | None  # None: the record expired
    kind: str | None
    request: dict[str, Any] | None
    delivered: bool

    @property
    def job_id(self) -> str:
        return JobKeys.of_record(self.key).job_id


@dataclass(frozen=True)
class Decision:
    resend: list[Candidate]  # absent from the broker in this sweep and the one before
    suspects: set[str]  # absent in this sweep for the first time: looked at again next sweep
    drop: list[str]  # index members whose job is no longer queued (or whose record expired)


def route(kind: str | None) -> tuple[str, str] | None:
    """The task and queue of a job of `kind`, or None for a kind no task runs (kept in celeryconfig)."""
    task = JOB_TASKS.get(kind or "")
    return None if task is None else (task, TASK_QUEUES[task])


def task_id_of(message: Any) -> str | None:
    """A Celery message's task id (`headers.id`), None for anything else."""
    try:
        return str(message["headers"]["id"])
    except (KeyError, TypeError):
        return None  # not a Celery message: not ours either


def message_ids(messages: Iterable[bytes | str]) -> set[str]:
    """Task ids (`headers.id`) of messages as kombu's Redis transport stores them in a queue list."""
    ids = (task_id_of(loads_or_none(raw)) for raw in messages)
    return {task_id for task_id in ids if task_id}


def unacked_ids(entries: Iterable[bytes | str]) -> set[str]:
    """Task ids of the `unacked` hash's values."""
    return {task_id for raw in entries if (task_id := unacked_task_id(raw))}


def unacked_task_id(raw: bytes | str) -> str | None:
    """The task id of one value of the `unacked` hash (JSON [message, exchange, routing key]); None when
    it is not a Celery message."""
    entry = loads_or_none(raw)
    return task_id_of(entry[0]) if isinstance(entry, list) and entry else None


def loads_or_none(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def decide(candidates: Sequence[Candidate], in_broker: set[str], suspects: set[str]) -> Decision:
    """Which jobs to send again: still queued, never delivered, and missing from the broker twice running."""
    resend, absent, drop = [], set(), []
    for job in candidates:
        if job.state != QUEUED.encode():
            drop.append(job.key)  # started or ended (the move removes it too), or expired
        elif job.delivered or job.job_id in in_broker:
            continue  # a worker has it (or had it: the broker's own redelivery takes care of it)
        elif route(job.kind) is None or job.request is None:
            log.warning(
                "queued job %s of kind %r has no task or request: not sent again", job.job_id, job.kind
            )
        elif job.job_id in suspects:
            resend.append(job)
        else:
            absent.add(job.job_id)
    return Decision(resend, absent, drop)


class Reconciler:
    """One per sweeper thread; remembers which jobs its previous sweep found missing."""

    def __init__(
        self,
        jobs: redis.Redis,
        broker: redis.Redis,
        send: Send,
        requeue_after_s: float,
        limit: int = SCAN_LIMIT,
    ) -> None:
        self.jobs, self.broker, self.send = jobs, broker, send
        self.requeue_after_s, self.limit = requeue_after_s, limit
        self._claim = jobs.register_script(CLAIM)
        self._suspects: set[str] = set()

    def sweep(self, now: float) -> list[str]:
        """Send again the lost messages of jobs queued since before `now - requeue_after_s`; their ids."""
        cutoff = now - self.requeue_after_s
        oldest = self.jobs.zrangebyscore(QUEUED_INDEX, "-inf", cutoff, 0, self.limit)
        keys = [key.decode() if isinstance(key, bytes) else str(key) for key in oldest]
        candidates = self._read(keys)
        queues = {r[1] for job in candidates if job.state == QUEUED.encode() and (r := route(job.kind))}
        decision = decide(candidates, self._in_broker(queues) if queues else set(), self._suspects)
        self._suspects = decision.suspects
        if decision.drop:
            self.jobs.zrem(QUEUED_INDEX, *decision.drop)
        sent = []
        for job in decision.resend:
            if int(self._claim(keys=[QUEUED_INDEX], args=[job.key, cutoff, now])) != 1:
                continue  # started meanwhile, or another sweeper claimed it
            task, _ = route(job.kind) or ("", "")
            self.send(task, job.job_id, job.request or {})
            log.warning("job %s was queued with no message in the broker: sent again (%s)", job.job_id, task)
            sent.append(job.job_id)
        return sent

    def _read(self, keys: list[str]) -> list[Candidate]:
        pipe = self.jobs.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, [Field.STATE, Field.KIND, Field.REQUEST])
            pipe.exists(JobKeys.of_record(key).deliveries)
        replies = pipe.execute() if keys else []
        candidates = []
        for key, (state, kind, request), delivered in zip(keys, replies[::2], replies[1::2], strict=True):
            candidates.append(
                Candidate(
                    key=key,
                    state=state,
                    kind=json.loads(kind) if kind else None,
                    request=json.loads(request) if request else None,
                    delivered=bool(delivered),
                )
            )
        return candidates

    def _in_broker(self, queues: Iterable[str]) -> set[str]:
        """Task ids waiting in `queues` or taken by a worker and not acknowledged, at one instant."""
        pipe = self.broker.pipeline(transaction=True)
        for queue in sorted(queues):
            for name in queue_lists(queue):
                pipe.lrange(name, 0, -1)
        pipe.hvals(Channel.unacked_key)
        *lists, unacked = pipe.execute()
        return message_ids(m for messages in lists for m in messages) | unacked_ids(unacked)


def for_settings(settings: Settings, send: Send) -> Reconciler | None:
    """A reconciler for a Redis broker; None when the broker is not Redis or `requeue_after_s` is 0."""
    if settings.requeue_after_s <= 0 or not settings.broker_is_redis:
        return None
    jobs, broker = connect_redis(settings.redis_url), connect_redis(settings.broker)
    return Reconciler(jobs, broker, send, settings.requeue_after_s)
