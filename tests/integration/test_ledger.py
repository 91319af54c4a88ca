"""The fan-out ledger on a real Redis: each batch counts once, exactly one caller sees the last batch."""

from __future__ import annotations

import uuid

import redis

from common.jobs import JobStore
from common.ledger import BatchLedger
from tests.integration.conftest import Stack


def test_batches_count_once_and_the_last_one_is_seen_once(stack: Stack) -> None:
    jobs = JobStore(redis.Redis.from_url(stack.redis_url), ttl_s=60)
    ledger = BatchLedger(jobs)
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "ingest", 1, {})
    ledger.start(job_id, batches=3, total=6)
    assert not ledger.finish_batch(job_id, 0, {"succeeded": 2, "chunks": 5})
    assert not ledger.finish_batch(job_id, 0, {"succeeded": 2, "chunks": 5})  # redelivered: ignored
    assert not ledger.finish_batch(job_id, 1, {"failed": 1, "skipped": 1})
    ledger.start(job_id, batches=3, total=6)  # a redelivered coordinator does not reset the counts
    assert ledger.finish_batch(job_id, 2, {"succeeded": 2, "chunks": 3})
    # Counted already, yet every batch is done: the same answer as the first time (a retried call whose
    # reply was lost must still end the job; ending twice is guarded)
    assert ledger.finish_batch(job_id, 2, {"succeeded": 2, "chunks": 3})
    record = jobs.get(job_id)
    assert record is not None
    assert record.progress == {"done": 6, "total": 6, "succeeded": 4, "failed": 1, "skipped": 1, "chunks": 8}
