"""Following a job over Server-Sent Events (`GET /api/v1/jobs/<id>/events`), with long-poll as fallback.

The parser follows the HTML standard's event-stream rules (fields, comments, one leading space, `data`
lines joined, a blank line dispatches, `retry` digits only), on lines split at CR, LF or CRLF only: JSON
may hold U+2028 and friends, which `str.splitlines` would wrongly split on. A stream the server closes
before the end is resumed with `Last-Event-ID`, as EventSource does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import requests

from client import http
from client.http import Job, QuarryClient, QuarryError, backoff_delays, error_of, job_path, retry_delay

EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class Event:
    name: str
    data: str
    event_id: str | None  # the last id the stream set, as EventSource keeps it
    retry_ms: int | None = None  # the latest `retry:` the stream sent


def parse(lines: Iterable[bytes]) -> Iterator[Event]:
    """Events of a stream given as lines without their line ends."""
    name, event_id, retry_ms = "", None, None
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace")
        if not line:
            if data:
                yield Event(name or "message", "\n".join(data), event_id, retry_ms)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's heartbeat
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            event_id = value
        elif field == "retry" and value.isdigit():
            retry_ms = int(value)


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines of a byte stream ending in CR, LF or CRLF (a CRLF split across two chunks is one end)."""
    pending, after_cr = b"", False
    for chunk in chunks:
        part = chunk[1:] if after_cr and chunk.startswith(b"\n") else chunk
        if part:
            after_cr = part.endswith(b"\r")
        pending += part
        *lines, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        yield from lines
    if pending:
        yield pending


class StreamUnavailable(Exception):
    """The server does not stream job events (an older server, or a proxy in the way): long-poll."""


def follow(
    client: QuarryClient,
    job_id: str,
    *,
    timeout: float | None = None,
    on_update: Callable[[Job], None] | None = None,
) -> Job:
    """Follow a job over SSE until it ends, resuming after each closed connection; where the server
    cannot stream, long-poll (`QuarryClient.wait`). Raises TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: list[str | None] = [None]  # the last event id, kept across connections
    backoff = backoff_delays()
    while True:
        try:
            job, delay = _one_connection(client, job_id, seen, deadline, on_update)
            if job is not None:
                return job
            backoff = backoff_delays()
        except StreamUnavailable:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            return client.wait(job_id, timeout=remaining, on_update=on_update)
        except (requests.ConnectionError, requests.Timeout, QuarryError) as exc:
            delay = retry_delay(exc, backoff)
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        http._sleep(delay)


def _one_connection(
    client: QuarryClient,
    job_id: str,
    seen: list[str | None],
    deadline: float | None,
    on_update: Callable[[Job], None] | None,
) -> tuple[Job | None, float]:
    """The job at its end, or None and how soon to reconnect (the server's `retry`) once it closed."""
    delay = 0.0
    for event in _connect(client, job_id, seen[0], deadline):
        seen[0] = event.event_id or seen[0]
        delay = (event.retry_ms or 0) / 1000
        if event.name == "error":
            raise _problem(event)
        if event.name in ("state", "progress", "end"):
            job = _update(event, on_update)
            if event.name == "end":
                return job, delay
    return None, delay


def _connect(
    client: QuarryClient, job_id: str, last_id: str | None, deadline: float | None
) -> Iterator[Event]:
    """One connection's events; ends when the server closes it (its time is up) or at the deadline."""
    headers = {"Accept": f"{EVENT_STREAM}, application/problem+json", **client.auth_headers()}
    if last_id:
        headers["Last-Event-ID"] = last_id
    url = client.base_url + job_path(job_id) + "/events"
    with client.session.get(url, headers=headers, stream=True, timeout=client.timeout) as response:
        if response.status_code == 404:
            client.job(job_id)  # raises the 404 when the job is missing; else the route is
            raise StreamUnavailable
        if not 200 <= response.status_code < 300:
            raise error_of(response)
        if not response.headers.get("Content-Type", "").startswith(EVENT_STREAM):
            raise StreamUnavailable
        for event in parse(split_lines(response.iter_content(chunk_size=None))):
            yield event
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} did not finish in time")


def _update(event: Event, on_update: Callable[[Job], None] | None) -> Job:
    job = Job.from_json(json.loads(event.data))
    if on_update is not None:
        on_update(job)
    return job


def _problem(event: Event) -> Exception:
    """The `error` event's problem as the client's error (404: the job expired; 503: Redis is away)."""
    body = json.loads(event.data)
    return QuarryError(int(body.get("status", 500)), str(body.get("title", "")), str(body.get("detail", "")))
