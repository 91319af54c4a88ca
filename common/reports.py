"""Per-document outcomes of an ingest job, so operators see exactly what happened to each document."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import redis

from common.fields import printable
from common.job_schema import JobKeys
from common.redis_client import redis_errors

Status = Literal["succeeded", "failed", "skipped"]
STATUSES: tuple[str, ...] = ("succeeded", "failed", "skipped")
MAX_REASON_CHARS = 500
"""A stored reason's length: with MAX_DOCUMENTS_PER_JOB it bounds the Redis memory of one job's reports."""


@dataclass(frozen=True)
class Outcome:
    doc_id: str
    status: Status
    reason: str | None = None
    chunks: int = 0


# One outcome per document id, kept in first-seen order and in one list per status, in one atomic step; a
# redelivered batch may change a document's status, which moves it between the status lists.
_RECORD = """
local lists = {succeeded = KEYS[3], failed = KEYS[4], skipped = KEYS[5]}
for i = 2, #ARGV, 3 do
  local id, status, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('hget', KEYS[1], id)
  if not old then
    redis.call('rpush', KEYS[2], id)
    redis.call('rpush', lists[status], id)
  else
    local was = cjson.decode(old)['status']
    if was ~= status then
      redis.call('lrem', lists[was], 1, id)
      redis.call('rpush', lists[status], id)
    end
  end
  redis.call('hset', KEYS[1], id, value)
end
for k = 1, #KEYS do redis.call('expire', KEYS[k], ARGV[1]) end
return 0
"""


class DocumentReports:
    """Each document's outcome (a hash by doc id), its first-seen order (a list) and a list per status.

    A page reads only its own slice (LRANGE + HMGET), so paging a job of 100,000 documents costs what a
    page costs, not what the job does.
    """

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._record = client.register_script(_RECORD)

    @staticmethod
    def _keys(job_id: str) -> list[str]:
        keys = JobKeys(job_id)
        return [keys.docs, keys.order(), *(keys.order(status) for status in STATUSES)]

    def _list(self, job_id: str, status: str | None) -> str:
        return JobKeys(job_id).order(status)

    def record(self, job_id: str, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        args: list[Any] = [self.ttl_s]
        for outcome in outcomes:
            value = {**asdict(outcome), "reason": printable(outcome.reason, MAX_REASON_CHARS) or None}
            args += [outcome.doc_id, outcome.status, json.dumps(value)]
        with redis_errors():
            self._record(keys=self._keys(job_id), args=args)

    def first(self, job_id: str) -> dict[str, Any] | None:
        """The first document's outcome (when all failed, an example of why), in two cheap reads."""
        docs, order = self._keys(job_id)[:2]
        with redis_errors():
            doc_id = self.client.lindex(order, 0)
            raw = self.client.hget(docs, doc_id) if doc_id is not None else None
        return json.loads(raw) if raw else None

    def ids(self, job_id: str, status: str) -> list[str]:
        """Ids of the documents with this outcome (bounded: a job holds at most MAX_DOCUMENTS_PER_JOB)."""
        with redis_errors():
            raw = cast(list[bytes], self.client.lrange(self._list(job_id, status), 0, -1))
        return [doc_id.decode() for doc_id in raw]

    def page(self, job_id: str, status: str | None, offset: int, limit: int) -> dict[str, Any]:
        listed = self._list(job_id, status)
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.llen(listed)
            pipe.lrange(listed, offset, offset + limit - 1)
            total, ids = pipe.execute()
            raw = self.client.hmget(self._keys(job_id)[0], ids) if ids else []
        items = [json.loads(value) for value in raw if value is not None]
        end = offset + len(ids)
        return {
            "items": items,
            "total": int(total),
            "offset": offset,
            "next_offset": end if ids and end < int(total) else None,
        }
