"""Per-document outcomes of an ingest job, so operators see exactly what happened to each document."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from common.jobs import KEY_PREFIX
from common.redis_client import redis_errors

Status = Literal["succeeded", "failed", "skipped"]
STATUSES: tuple[str, ...] = ("succeeded", "failed", "skipped")


@dataclass(frozen=True)
class Outcome:
    doc_id: str
    status: Status
    reason: str | None = None
    chunks: int = 0


class DocumentReports:
    """A hash doc_id -> outcome plus a list keeping first-seen order, both expiring with the job."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str]:
        return KEY_PREFIX + job_id + ":docs", KEY_PREFIX + job_id + ":order"

    def record(self, job_id: str, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        docs, order = self._keys(job_id)
        with redis_errors():
            known = self.client.hmget(docs, [o.doc_id for o in outcomes])
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(docs, mapping={o.doc_id: json.dumps(asdict(o)) for o in outcomes})
            new = [o.doc_id for o, seen in zip(outcomes, known, strict=True) if seen is None]
            if new:
                pipe.rpush(order, *new)
            pipe.expire(docs, self.ttl_s)
            pipe.expire(order, self.ttl_s)
            pipe.execute()

    def first(self, job_id: str) -> dict[str, Any] | None:
        """The first document's outcome (when all failed, an example of why), in two cheap reads."""
        docs, order = self._keys(job_id)
        with redis_errors():
            doc_id = self.client.lindex(order, 0)
            raw = self.client.hget(docs, doc_id) if doc_id is not None else None
        return json.loads(raw) if raw else None

    def all(self, job_id: str) -> list[dict[str, Any]]:
        docs, order = self._keys(job_id)
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.lrange(order, 0, -1)
            pipe.hgetall(docs)
            ids, raw = pipe.execute()
        return [json.loads(raw[doc_id]) for doc_id in ids if doc_id in raw]

    def page(self, job_id: str, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        items = [item for item in self.all(job_id) if status is None or item["status"] == status]
        end = offset + limit
        return {
            "items": items[offset:end],
            "total": len(items),
            "offset": offset,
            "next_offset": end if end < len(items) else None,
        }
