"""Job events: what each record change becomes, how one connection is bounded and kept alive, how a
Redis failure ends it; and the client's parser, against the HTML standard's rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis as redis_py

from api.events import StreamLimits, snapshot, stream
from client.events import Event, parse, split_lines
from common.job_record import JobRecord, JobState

LIMITS = StreamLimits(max_s=30.0, heartbeat_s=10.0, poll_s=1.0, retry_ms=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakePubSub:
    """Waiting moves the test's clock on instead of sleeping; `changes` happen at given times."""

    def __init__(self, store: FakeJobs) -> None:
        self.store = store
        self.waits: list[float] = []

    def __enter__(self) -> FakePubSub:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def subscribe(self, channel: str) -> None:
        assert channel == "quarry:job:j1:events"

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        self.waits.append(timeout)
        clock = self.store.clock
        pushed = [at for at in self.store.pushes if clock.now < at <= clock.now + timeout]
        clock.now = pushed[0] if pushed else clock.now + timeout
        if self.store.fail_at is not None and clock.now >= self.store.fail_at:
            raise redis_py.ConnectionError("Connection refused")
        return {"type": "message", "data": b"progress"} if pushed else None


class FakeJobs:
    """A JobStore whose record follows a script of (time, record) changes."""

    def __init__(
        self,
        changes: list[tuple[float, JobRecord | None]],
        fail_at: float | None = None,
        pushes: tuple[float, ...] = (),
    ) -> None:
        self.clock = Clock()
        self.changes = changes
        self.fail_at = fail_at
        self.pushes = pushes  # when the job's channel says it changed
        self.sub = FakePubSub(self)
        self.client = self  # the stream subscribes through `jobs.client.pubsub()`

    def channel(self, job_id: str) -> str:
        return f"quarry:job:{job_id}:events"

    def get(self, job_id: str) -> JobRecord | None:
        current = None
        for at, record in self.changes:
            if at <= self.clock.now:
                current = record
        return current

    def pubsub(self, **_: Any) -> FakePubSub:
        return self.sub


def _jobs(changes: list[tuple[float, JobRecord | None]], **kw: Any) -> FakeJobs:
    return FakeJobs(changes, **kw)


def _events(text: str) -> list[Event]:
    return list(parse(split_lines([text.encode()])))


RUNNING = JobRecord("j1", "ingest", JobState.RUNNING, {"done": 0, "total": 4}, heartbeat_at="t0")
QUEUED = replace(RUNNING, state=JobState.QUEUED)
HALF = replace(RUNNING, progress={"done": 2, "total": 4}, heartbeat_at="t1")
DONE = replace(RUNNING, state=JobState.SUCCEEDED, progress={"done": 4, "total": 4}, result={"chunks": 9})


def _run(jobs: FakeJobs, last_id: str | None = None, limits: StreamLimits = LIMITS) -> list[Event]:
    return _events("".join(stream(jobs, "j1", last_id, limits, clock=jobs.clock)))  # type: ignore[arg-type]


def test_each_change_is_one_event_named_by_what_moved_and_the_end_closes_the_stream() -> None:
    beat_only = replace(RUNNING, heartbeat_at="t9")  # a heartbeat alone is no change
    jobs = _jobs([(0, QUEUED), (1, RUNNING), (2, beat_only), (3, HALF), (5, DONE), (6, QUEUED)])
    events = _run(jobs)
    assert [e.name for e in events] == ["state", "state", "progress", "end"]
    assert [json.loads(e.data)["state"] for e in events] == ["queued", "running", "running", "succeeded"]
    assert "result" not in json.loads(events[0].data) and json.loads(events[-1].data)["result"] == {
        "chunks": 9
    }
    assert len({e.event_id for e in events}) == 4 and events[0].retry_ms == 1000
    assert jobs.clock.now == 5.0  # closed at the end, not at the connection's time limit


def test_a_resumed_stream_sends_only_what_changed_since_the_id_it_was_given() -> None:
    seen = snapshot(HALF, None).event_id
    assert seen.startswith("running-")
    assert _run(_jobs([(0, HALF), (2, DONE)]), seen)[0].name == "end"  # not HALF again
    moved = _run(_jobs([(0, DONE)]), snapshot(QUEUED, None).event_id)
    assert [e.name for e in moved] == ["end"]
    assert snapshot(replace(HALF, heartbeat_at="t5"), seen).event_id == seen
    assert snapshot(HALF, snapshot(QUEUED, None).event_id).name == "state"  # the state moved meanwhile


def test_a_connection_ends_after_max_s_with_heartbeats_while_nothing_moves() -> None:
    jobs = _jobs([(0, RUNNING)])
    limits = replace(LIMITS, max_s=30.0, heartbeat_s=10.0, poll_s=1.0)
    text = "".join(stream(jobs, "j1", None, limits, clock=jobs.clock))  # type: ignore[arg-type]
    assert jobs.clock.now == pytest.approx(30.0)
    assert text.count(": heartbeat\n\n") == 2  # at 10 and 20 s; at 30 s the connection ends instead
    assert max(jobs.sub.waits) <= 1.0  # progress is read at least every poll_s


def test_a_pushed_change_is_read_at_once_not_at_the_next_poll() -> None:
    jobs = _jobs([(0, RUNNING), (2.5, HALF), (7.25, DONE)], pushes=(2.5, 7.25))
    events = _run(jobs, limits=replace(LIMITS, poll_s=100.0, heartbeat_s=100.0))
    assert [e.name for e in events] == ["state", "progress", "end"]
    assert jobs.clock.now == 7.25  # woken at each push; a poll alone would have waited 100 s


def test_redis_gone_mid_stream_ends_it_with_an_error_event_not_a_broken_connection() -> None:
    events = _run(_jobs([(0, RUNNING)], fail_at=3.0))
    assert [e.name for e in events] == ["state", "error"]
    problem = json.loads(events[-1].data)
    assert problem["status"] == 503 and "Redis unreachable" in problem["detail"]


def test_a_job_that_expires_while_followed_ends_with_a_404_event() -> None:
    events = _run(_jobs([(0, RUNNING), (2, None)]))
    assert [e.name for e in events] == ["state", "error"] and json.loads(events[-1].data)["status"] == 404


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data: a\n\n", [("message", "a", None)]),
        ("event: x\ndata: a\ndata:  b\nid: 7\n\n", [("x", "a\n b", "7")]),  # one leading space only
        (": heartbeat\n\nevent: x\n\n", []),  # comments, and events without data, dispatch nothing
        ("id: 1\ndata: a\n\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "1")]),  # the id stays
        ("id: bad\0id\ndata: a\n\n", [("message", "a", None)]),  # an id holding NUL is ignored
        ("data\n\n", [("message", "", None)]),  # a field without a colon has an empty value
        ("data: a\r\ndata: b\rdata: c\n\n", [("message", "a\nb\nc", None)]),  # CRLF, CR and LF all end lines
        ('data: "\u2028x"\n\n', [("message", '"\u2028x"', None)]),  # not a line end in SSE
    ],
)
def test_the_parser_follows_the_standard(text: str, expected: list[tuple[str, str, str | None]]) -> None:
    assert [(e.name, e.data, e.event_id) for e in _events(text)] == expected


def test_retry_takes_digits_only_and_lines_may_split_anywhere_across_chunks() -> None:
    assert [e.retry_ms for e in _events("retry: 2500\ndata: a\n\nretry: 1e3\ndata: b\n\n")] == [2500, 2500]
    text = b"id: 1\r\nevent: end\r\ndata: {}\r\n\r\n"
    for cut in range(1, len(text)):
        chunks: Iterator[bytes] = iter([text[:cut], text[cut:]])
        assert [(e.name, e.event_id) for e in parse(split_lines(chunks))] == [("end", "1")], cut
