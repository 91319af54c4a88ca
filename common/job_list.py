"""A caller's jobs, newest first, filtered and paged with an opaque cursor.

`JobStore.create` lists every job in two sorted sets scored by creation time (`common.job_schema`): its
key's own, which is all a keyed caller ever reads (another tenant's jobs are not in it), and one of every
job, which the open API reads. A page walks its index from the cursor down, reading records a chunk at a
time in one round trip each, until it has `limit` matches or has examined `scan` entries: a filter that
matches little costs a bounded amount per request, and the cursor says where the next request goes on.
An entry whose record expired is dropped from the index on the way.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidRequest
from common.job_record import JobRecord
from common.job_schema import CREATED_INDEX, list_index
from common.jobs import JobStore
from common.redis_client import redis_errors

CHUNK = 100  # index entries read per round trip


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    kind: str | None = None
    collection: str | None = None
    created_after_ms: float | None = None  # exclusive

    def matches(self, record: JobRecord) -> bool:
        return (
            (self.state is None or record.state == self.state)
            and (self.kind is None or record.kind == self.kind)
            and (self.collection is None or record.collection == self.collection)
        )


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the creation score and id of the last job examined (listed or not)."""

    score: float
    job_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(json.dumps([self.score, self.job_id]).encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            score, job_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if not math.isfinite(float(score)) or not isinstance(job_id, str):
                raise ValueError("not a cursor")  # NaN would reach Redis as a range it refuses
            return cls(float(score), job_id)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise InvalidRequest("cursor: not one this service gave out; start again without it") from exc


@dataclass(frozen=True)
class JobPage:
    items: list[JobRecord]
    next_cursor: Cursor | None


class JobLister:
    def __init__(self, jobs: JobStore, scan: int) -> None:
        self.jobs = jobs
        self.scan = scan  # index entries one request may examine at most

    def page(self, owner: str | None, flt: JobFilter, limit: int, cursor: Cursor | None) -> JobPage:
        """Jobs of `owner` (None: the open API, every job) matching `flt`, newest first."""
        items: list[JobRecord] = []
        expired: list[str] = []
        last, examined, full = None, 0, False
        for job_id, score, record in self._walk(list_index(owner), flt, cursor):
            last, examined = Cursor(score, job_id), examined + 1
            if record is None:
                expired.append(job_id)
            elif flt.matches(record):
                items.append(record)
                full = len(items) == limit
                if full:
                    break
        if expired:
            self._forget(owner, expired)
        more = full or examined >= self.scan  # else the walk reached the end of the index
        return JobPage(items, last if more else None)

    def _walk(
        self, index: str, flt: JobFilter, cursor: Cursor | None
    ) -> Iterator[tuple[str, float, JobRecord | None]]:
        """Index entries from the cursor down, each with its record (None: expired), `scan` at most."""
        top: Any = "+inf" if cursor is None else cursor.score
        bottom: Any = "-inf" if flt.created_after_ms is None else f"({flt.created_after_ms}"
        examined, offset = 0, 0
        while examined < self.scan:
            with redis_errors():
                chunk: list[tuple[bytes, float]] = self.jobs.client.zrevrangebyscore(  # type: ignore[assignment]
                    index, top, bottom, offset, CHUNK, withscores=True
                )
            offset += len(chunk)
            entries = [(member.decode(), score) for member, score in chunk]
            if cursor is not None:  # same score as the cursor: ids from it on were listed already
                entries = [(i, s) for i, s in entries if not (s == cursor.score and i >= cursor.job_id)]
            entries = entries[: self.scan - examined]
            examined += len(entries)
            yield from (
                (job_id, score, record)
                for (job_id, score), record in zip(
                    entries, self.jobs.get_many([job_id for job_id, _ in entries]), strict=True
                )
            )
            if len(chunk) < CHUNK:
                return

    def _forget(self, owner: str | None, job_ids: list[str]) -> None:
        with redis_errors():
            pipe = self.jobs.client.pipeline(transaction=False)
            for index in {CREATED_INDEX, list_index(owner)}:
                pipe.zrem(index, *job_ids)
            pipe.execute()


def listed(record: JobRecord) -> dict[str, Any]:
    """A list item: the job as `GET /api/v1/jobs/<id>` shows it, without the result body."""
    item = record.to_json()
    item.pop("result", None)
    return item
