"""Sends again the lost batch messages of a running ingest job (the batch counterpart of workers.reconciler).

A batch message taken by kombu's BRPOP and lost before it reached `unacked` (see workers.reconciler) leaves
its job `running` with one batch never counted: the ledger never completes, nothing ends the job. Ingest
jobs whose coordinator finished the fan-out (`batches_enqueued`) are listed in `FANNED_INDEX`
(`BatchLedger.enqueued`). A sweep reads those listed longer than `requeue_after_s` ago; one is stuck when
it is still `running`, no task of it beats, and a batch index below `batches_total` is missing from
`<job>:batches` and from the ingest queue and `unacked` (matched by the kwargs job id and index: batch
task ids are random) in two sweeps in a row. The missing batches are sent again with kwargs rebuilt as the
coordinator built them (`workers.fanout.enqueue_batches`) from the job's stored request. An ended or
expired job leaves the index when a sweep reads it.

A batch sent again next to a late original is harmless: the ledger counts an index once, reports and
Milvus writes are idempotent under the documents' locks, and `BatchTask.before_start` ignores a batch of an
ended job.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu.transport.redis import Channel

from common.contracts import INGEST_BATCH_TASK, INGEST_QUEUE
from common.errors import InvalidRequest
from common.job_schema import BEAT_PREFIX, FANNED_INDEX, Field, JobKeys
from common.messages import queue_lists
from workers.fanout import batch_kwargs
from workers.reconciler import CLAIM, SCAN_LIMIT, Send, loads_or_none

log = logging.getLogger(__name__)
RUNNING = json.dumps("running").encode()


@dataclass(frozen=True)
class FannedJob:
    key: str
    state: bytes | None
    total: int
    counted: set[int]
    beating: bool  # a task of the job beat within its timeout
    request: dict[str, Any] | None

    @property
    def job_id(self) -> str:
        return JobKeys.of_record(self.key).job_id


def queued_batches(messages: Iterable[Any]) -> set[tuple[str, int]]:
    """(job id, index) of the ingest-batch messages among kombu messages (decoded JSON)."""
    found = set()
    for message in messages:
        try:
            if message["headers"]["task"] != INGEST_BATCH_TASK:
                continue
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            found.add((str(kwargs["job_id"]), int(kwargs["index"])))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def missing(
    jobs: Sequence[FannedJob], in_broker: set[tuple[str, int]]
) -> tuple[dict[str, list[int]], list[str]]:
    """For each stuck job, its batch indexes counted nowhere and queued nowhere; and the keys to drop."""
    lost, drop = {}, []
    for job in jobs:
        if job.state != RUNNING:
            drop.append(job.key)  # ended (or expired): nothing to wait for
            continue
        if job.beating or job.request is None:
            continue
        gone = [i for i in range(job.total) if i not in job.counted and (job.job_id, i) not in in_broker]
        if gone:
            lost[job.job_id] = gone
    return lost, drop


class LostBatches:
    """One per sweeper thread; remembers the batches its previous sweep found missing."""

    def __init__(self, jobs: redis.Redis, broker: redis.Redis, send: Send, requeue_after_s: float) -> None:
        self.jobs, self.broker, self.send = jobs, broker, send
        self.requeue_after_s = requeue_after_s
        self._claim = jobs.register_script(CLAIM)
        self._suspects: dict[str, list[int]] = {}

    def sweep(self, now: float) -> dict[str, list[int]]:
        """Send again the batches missing twice in a row; {job id: indexes sent}."""
        cutoff = now - self.requeue_after_s
        oldest = self.jobs.zrangebyscore(FANNED_INDEX, "-inf", cutoff, 0, SCAN_LIMIT)
        jobs = self._read([key.decode() if isinstance(key, bytes) else str(key) for key in oldest], now)
        in_broker = self._in_broker() if any(job.state == RUNNING for job in jobs) else set()
        lost, drop = missing(jobs, in_broker)
        if drop:
            self.jobs.zrem(FANNED_INDEX, *drop)
        confirmed = {job: sorted(set(ix) & set(self._suspects.get(job, []))) for job, ix in lost.items()}
        self._suspects = lost
        requests = {job.job_id: job.request or {} for job in jobs}
        sent = {}
        for job_id, indexes in confirmed.items():
            claim: list[str | float] = [JobKeys(job_id).record, cutoff, now]
            if not indexes or int(self._claim(keys=[FANNED_INDEX], args=claim)) != 1:
                continue
            try:
                kwargs = [batch_kwargs(job_id, index, requests[job_id]) for index in indexes]
            except InvalidRequest as exc:  # its stored request does not parse: nothing to send it from
                log.warning(
                    "job %s: batches %s were in no queue and cannot be sent again: %s", job_id, indexes, exc
                )
                continue
            for each in kwargs:
                self.send(INGEST_BATCH_TASK, None, each)
            log.warning("job %s: batches %s were in no queue: sent again", job_id, indexes)
            sent[job_id] = indexes
        return sent

    def _read(self, keys: list[str], now: float) -> list[FannedJob]:
        pipe = self.jobs.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
            pipe.smembers(JobKeys.of_record(key).batches)
        replies = pipe.execute() if keys else []
        return [
            _fanned(key, raw, counted, now)
            for key, raw, counted in zip(keys, replies[::2], replies[1::2], strict=True)
        ]

    def _in_broker(self) -> set[tuple[str, int]]:
        pipe = self.broker.pipeline(transaction=True)
        for name in queue_lists(INGEST_QUEUE):
            pipe.lrange(name, 0, -1)
        pipe.hvals(Channel.unacked_key)
        *lists, unacked = pipe.execute()
        messages = [loads_or_none(raw) for messages in lists for raw in messages]
        messages += [entry[0] for entry in map(loads_or_none, unacked) if isinstance(entry, list) and entry]
        return queued_batches(messages)


def _fanned(key: str, raw: dict[bytes, bytes], counted: set[bytes], now: float) -> FannedJob:
    beats = [json.loads(value) for name, value in raw.items() if name.startswith(BEAT_PREFIX.encode())]
    request = raw.get(Field.REQUEST.encode())
    return FannedJob(
        key=key,
        state=raw.get(Field.STATE.encode()),
        total=int(raw.get(Field.BATCHES_TOTAL.encode()) or 0),
        counted={int(index) for index in counted},
        beating=any(float(beat.get("until", 0)) >= now for beat in beats),
        request=json.loads(request) if request else None,
    )
