"""A job's changes as Server-Sent Events, until it ends (`GET /api/v1/jobs/<id>/events`, `api.jobs`).

Why SSE and not WebSockets: the flow is one way (the server tells, the client only listens), SSE is plain
HTTP that every proxy, load balancer and `curl -N` already passes, it runs on gunicorn's threads with no
second server or upgrade, and the protocol itself resumes: the browser's `EventSource` reconnects on its
own and sends the last id it saw (`Last-Event-ID`).

Events are snapshots, not a log: each carries the job as `GET /api/v1/jobs/<id>` shows it (without the
result until the end), and its id names that snapshot (`<state>-<digest>`). A client resuming with an id
gets the job's current snapshot if it changed since, so nothing between two snapshots can be lost, and
the state in the id tells whether the state moved. Event names: `state` (the state moved, or the first
event), `progress` (only the progress moved), `end` (the job ended; the job with its result, then the
stream closes), `error` (a problem+json body: the job expired, or Redis went away; the stream closes).

A stream holds a gunicorn thread, so one connection lasts at most `MAX_WAIT_S`; the client reconnects
(`retry:` tells EventSource how soon) and resumes. Comment lines every `SSE_HEARTBEAT_S` keep idle
proxies from closing it. Each move of state or progress is published on the job's channel, which wakes
the stream to read the record at once; it also reads it every `SSE_POLL_S`, should a wake-up be lost.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from api.problems import problem_body, status_of
from common.errors import QuarryError
from common.job_list import listed
from common.job_record import JobRecord
from common.jobs import JobStore
from common.redis_client import redis_errors

VOLATILE = ("heartbeat_at", "callback")  # change without the job moving: no event of their own


@dataclass(frozen=True)
class StreamLimits:
    """How long one connection may last, how often it shows life, how often it reads the record."""

    max_s: float
    heartbeat_s: float
    poll_s: float
    retry_ms: int


@dataclass(frozen=True)
class Snapshot:
    """One event: its name, its id and its JSON body."""

    name: str
    event_id: str
    data: dict[str, Any]


def snapshot(record: JobRecord, previous_id: str | None) -> Snapshot:
    """The event a record makes after the one the client saw last (`previous_id`, None: none yet)."""
    body = record.to_json() if record.state.terminal else listed(record)
    digest = json.dumps({k: v for k, v in body.items() if k not in VOLATILE}, sort_keys=True, default=str)
    event_id = f"{record.state}-{hashlib.sha256(digest.encode()).hexdigest()[:16]}"
    if record.state.terminal:
        name = "end"
    elif previous_id is None or previous_id.split("-", 1)[0] != str(record.state):
        name = "state"
    else:
        name = "progress"
    return Snapshot(name, event_id, body)


def frame(event: Snapshot) -> str:
    """The text of one event (`data` is one line: JSON never needs a newline)."""
    return f"id: {event.event_id}\nevent: {event.name}\ndata: {json.dumps(event.data)}\n\n"


def error_frame(status: int, title: str, detail: str) -> str:
    return f"event: error\ndata: {json.dumps(problem_body(status, title, detail))}\n\n"


def stream(
    jobs: JobStore,
    job_id: str,
    last_id: str | None,
    limits: StreamLimits,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[str]:
    """Events of one job until it ends or the connection's time is up; Redis failures end it with an
    `error` event (the status line went out long ago: it cannot be a 503 any more)."""
    yield f"retry: {limits.retry_ms}\n\n"
    try:
        yield from _events(jobs, job_id, last_id, limits, clock)
    except QuarryError as exc:
        yield error_frame(status_of(exc), exc.title, exc.detail)


def _events(
    jobs: JobStore, job_id: str, last_id: str | None, limits: StreamLimits, clock: Callable[[], float]
) -> Iterator[str]:
    deadline = clock() + limits.max_s
    shown = clock()  # when the client last got a line
    with redis_errors(), jobs.client.pubsub(ignore_subscribe_messages=True) as pubsub:
        pubsub.subscribe(jobs.channel(job_id))  # before the read: a change published after it wakes us
        while True:
            record = jobs.get(job_id)
            if record is None:
                yield error_frame(404, "Not Found", f"job {job_id!r} expired")
                return
            event = snapshot(record, last_id)
            if event.event_id != last_id:
                yield frame(event)
                last_id, shown = event.event_id, clock()
            if event.name == "end":
                return
            poll_at = clock() + limits.poll_s
            while True:  # until the job says it changed, or it is time to look anyway
                now = clock()
                if now >= deadline:
                    return  # the client resumes with Last-Event-ID on a fresh connection
                if now - shown >= limits.heartbeat_s:
                    yield ": heartbeat\n\n"
                    shown = now
                wake = min(poll_at, deadline, shown + limits.heartbeat_s) - now
                if pubsub.get_message(timeout=max(wake, 0.0)) is not None or clock() >= poll_at:
                    break
