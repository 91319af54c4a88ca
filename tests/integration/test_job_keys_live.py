"""What real jobs leave in Redis is what `common.job_schema` declares: no other key, no other field."""

from __future__ import annotations

import redis

from common.job_schema import JobKeys, declared
from common.reports import STATUSES
from tests.integration.conftest import Stack

DOCS = [
    {"id": "schema-1", "text": "Basalt forms when lava cools quickly at the surface."},
    {"id": "schema-2", "text": "Granite forms when magma cools slowly deep underground."},
]


def _allowed(keys: JobKeys) -> set[str]:
    # `events` is a pub/sub channel, never a key
    beside = {keys.deliveries, keys.delivery_tokens, keys.batches, keys.docs, keys.order()}
    return {keys.record, *beside, *(keys.order(s) for s in STATUSES), *(keys.lease(i) for i in range(64))}


def test_every_key_and_field_a_job_leaves_in_redis_is_declared(stack: Stack) -> None:
    ingest = stack.run("/api/v1/documents", json={"collection": "schema", "documents": DOCS})
    ask = stack.run("/api/v1/ask", json={"collection": "schema", "question": "How does basalt form?"})
    assert ingest["state"] == ask["state"] == "succeeded", (ingest, ask)
    client = redis.Redis.from_url(stack.redis_url)
    found: dict[str, set[str]] = {}
    for job in (ingest, ask):
        keys = JobKeys(job["job_id"])
        stored = {key.decode() for key in client.scan_iter(match=keys.record + "*", count=1000)}
        assert stored <= _allowed(keys), stored - _allowed(keys)
        fields = {name.decode() for name in client.hkeys(keys.record)}
        assert fields and {name for name in fields if not declared(name)} == set()
        found[job["job_id"]] = stored
    ingest_keys = JobKeys(ingest["job_id"])
    # the ledger, the liveness counts and the per-document reports are where the schema says
    assert {ingest_keys.batches, ingest_keys.deliveries, ingest_keys.docs, ingest_keys.order()} <= found[
        ingest["job_id"]
    ]
    assert {"batches_total", "batches_done", "request", "progress"} <= {
        name.decode() for name in client.hkeys(ingest_keys.record)
    }
