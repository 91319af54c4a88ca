"""Everything Quarry keeps in Redis for one job, declared once: the record's fields and the keys beside it.

A job is a hash, its **record** (`JobKeys.record`), whose fields (`Field`) each hold a JSON value, plus
keys named by suffix beside it, and two indexes over all jobs. Celery keeps its own meta under its own
prefix, which `JobStore.get` reads in the same round trip. Every module that reads or writes a job takes
its names from here, Lua scripts included (`lua` fills `$field` in), so a name changes in one place.

    quarry:job:<id>                       hash: the record (`Field`; `beat:<task id>` per running task)
    quarry:job:<id>:events                pub/sub channel: a wake-up at each move of state or progress
    quarry:job:<id>:deliveries            hash: deliveries per task attempt (`common.liveness`)
    quarry:job:<id>:deliveries:tokens     hash: the count each delivery got (a repeated call reads it)
    quarry:job:<id>:batches               set: indexes of the batches counted (`common.ledger`)
    quarry:job:<id>:lease:<n>             string: the delivery running batch n (`common.locks.take`)
    quarry:job:<id>:docs                  hash: each document's outcome (`common.reports`)
    quarry:job:<id>:order[:<status>]      lists: documents in first-seen order, all and per status
    celery-task-meta-<id>                 Celery's result meta of the job's (first) task
    quarry:jobs:queued, quarry:jobs:fanned   sorted sets of record keys (`workers.reconciler`,
                                             `workers.lost_batches`)
    quarry:jobs:running                   sorted set of record keys of running jobs, by start (metrics)
    quarry:jobs:created                   sorted set: every job id by creation time (ms), the open API's list
    quarry:jobs:owner:<key name>          sorted set: one API key's job ids alike (`common.job_list`)

Every key of a job expires with its record (the job TTL); the two list indexes drop entries older than
the TTL, and their oldest beyond a cap, each time a job is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from string import Template

KEY_PREFIX = "quarry:job:"
CELERY_META_PREFIX = "celery-task-meta-"
QUEUED_INDEX = "quarry:jobs:queued"  # sorted set: record keys of queued jobs, by when their message was sent
RUNNING_INDEX = "quarry:jobs:running"  # sorted set: record keys of running jobs, by when they started
FANNED_INDEX = "quarry:jobs:fanned"  # sorted set: record keys of ingest jobs whose batches were all sent
CREATED_INDEX = "quarry:jobs:created"  # sorted set: every job id, scored by creation time in ms
OWNER_INDEX_PREFIX = "quarry:jobs:owner:"  # + API key name: that key's job ids, scored alike
BEAT_PREFIX = "beat:"  # + task id: a field of the record, the running task's last heartbeat


class Field(StrEnum):
    """The record's fields. The first twelve are what a client reads (`common.job_record.JobRecord`)."""

    KIND = "kind"
    STATE = "state"
    PROGRESS = "progress"  # {"done", "total"}; ingest adds succeeded/failed/skipped/chunks
    RESULT = "result"
    ERROR = "error"
    OWNER = "owner"
    COLLECTION = "collection"  # the collection a job works on (its request's), for filtering lists
    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    HEARTBEAT_AT = "heartbeat_at"
    CALLBACK = "callback"  # the webhook: {"url", "state", "attempts", "last_status", ...}
    REQUEST = "request"  # the task's payload, for retries and for re-sending a lost message
    CANCEL_REQUESTED = "cancel_requested"
    LAST_MOVE = "last_move"  # the token of the latest state move written (`common.transitions`)
    BATCHES_TOTAL = "batches_total"  # an ingest job's split is done (`common.ledger`)
    BATCHES_DONE = "batches_done"
    BATCHES_ENQUEUED = "batches_enqueued"  # its fan-out is done
    CALLBACK_EVENT = "callback_event"  # the webhook's one event id, claimed once


def list_index(owner: str | None) -> str:
    """The index a caller lists: its own jobs, or every job for the open API (no keys, owner None)."""
    return CREATED_INDEX if owner is None else OWNER_INDEX_PREFIX + owner


def declared(name: str) -> bool:
    """Whether a field name of a stored record is one this schema declares."""
    return name.startswith(BEAT_PREFIX) or name in Field._value2member_map_


@dataclass(frozen=True)
class JobKeys:
    """The names of one job's keys."""

    job_id: str

    @classmethod
    def of_record(cls, record_key: str) -> JobKeys:
        """The keys of the job whose record is `record_key` (what the indexes list)."""
        return cls(record_key.removeprefix(KEY_PREFIX))

    @property
    def record(self) -> str:
        return KEY_PREFIX + self.job_id

    @property
    def events(self) -> str:
        return self.record + ":events"

    @property
    def deliveries(self) -> str:
        return self.record + ":deliveries"

    @property
    def delivery_tokens(self) -> str:
        return self.deliveries + ":tokens"

    @property
    def batches(self) -> str:
        return self.record + ":batches"

    def lease(self, index: int) -> str:
        return f"{self.record}:lease:{index}"

    @property
    def docs(self) -> str:
        return self.record + ":docs"

    def order(self, status: str | None = None) -> str:
        return self.record + ":order" + ("" if status is None else f":{status}")

    @property
    def celery_meta(self) -> str:
        return CELERY_META_PREFIX + self.job_id


def lua(source: str) -> str:
    """A script's source with the record's field names filled in: `$state` reads 'state'. A name the
    schema does not declare raises here, when the module loads, not in Redis."""
    return Template(source).substitute({field.name.lower(): field.value for field in Field})
