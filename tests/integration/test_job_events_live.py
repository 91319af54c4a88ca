"""GET /api/v1/jobs/<id>/events on the live stack, parsed by an independent SSE client (sseclient-py) and by
Quarry's own: a real ingest streams its progress and ends with its result; a job driven step by step
through Redis shows each change once, heartbeats while idle, a connection bounded by MAX_WAIT_S that
resumes from Last-Event-ID without repeating or losing a change, and a 204 once the end was seen; another
tenant's job is a 404; `quarry jobs watch` follows a job to its end."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import requests
import sseclient

from client.cli import main as cli_main
from client.events import Event, parse, split_lines
from common.job_record import JobRecord, JobState
from common.jobs import JobStore
from devstack.processes import Supervisor, api_argv, free_port, wait_until
from tests.integration.conftest import KEYS, Stack, healthy

pytestmark = pytest.mark.integration
REPLICA_MAX_WAIT_S = 3.0  # the replica's MAX_WAIT_S: how long one events connection lasts there
REPLICA_HEARTBEAT_S = 0.5


@pytest.fixture(scope="module")
def replica(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second API process on the same Redis and Milvus, with short event connections that never look
    at the job unwoken: every change must be pushed to reach the client."""
    tmp, port = tmp_path_factory.mktemp("events-api"), free_port()
    env = {
        **stack.env,
        "DATA_DIR": str(tmp / "data"),  # its own metrics files; uploads are not used here
        "API_PORT": str(port),
        "MAX_WAIT_S": str(REPLICA_MAX_WAIT_S),
        "SSE_HEARTBEAT_S": str(REPLICA_HEARTBEAT_S),
        "SSE_POLL_S": "60",  # never within a connection: each event below arrives because it was pushed
    }
    sup = Supervisor(env=env, log_dir=tmp / "logs")
    try:
        proc = sup.start("events-api", api_argv("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(url), 60, "second API", proc)
        yield Stack(url=url, redis_url=stack.redis_url, logs=tmp / "logs", env=env)
    finally:
        sup.stop()


@contextlib.contextmanager
def _stream(stack: Stack, job_id: str, last_id: str | None = None) -> Iterator[requests.Response]:
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
    with stack.request("GET", f"/api/v1/jobs/{job_id}/events", headers=headers, stream=True) as response:
        yield response


def test_an_ingest_streams_its_progress_and_ends_with_its_result(stack: Stack) -> None:
    docs = [{"id": f"sse-{i}", "text": f"Event stream document {i} about tides. " * 40} for i in range(40)]
    body = {"collection": "sse-live", "documents": docs}
    accepted = stack.post("/api/v1/documents", json=body)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    with _stream(stack, job_id) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        events = list(sseclient.SSEClient(response).events())  # ends only when the server closes it
    names = [event.event for event in events]
    assert names[-1] == "end" and "end" not in names[:-1], names
    assert names[0] in ("state", "end") and set(names) <= {"state", "progress", "end"}
    bodies = [json.loads(event.data) for event in events]
    done = [b["progress"]["done"] for b in bodies]
    assert done == sorted(done) and done[-1] == 40, done  # progress never goes back
    assert len({event.id for event in events}) == len(events)  # each event is a change
    final = stack.get(f"/api/v1/jobs/{job_id}").json()
    assert bodies[-1]["state"] == final["state"] == "succeeded"
    assert bodies[-1]["result"] == final["result"] and bodies[-1]["progress"] == final["progress"]
    assert all("result" not in b for b in bodies[:-1])  # the result comes once, with the end
    with _stream(stack, job_id, events[-1].id) as again:
        assert again.status_code == 204  # the end was seen: EventSource stops reconnecting


@dataclass
class Reader:
    """Quarry's own parser over a live connection, keeping every raw line and when it came."""

    response: requests.Response

    def __post_init__(self) -> None:
        self.lines: list[tuple[float, bytes]] = []
        self.started = time.monotonic()
        self.events = parse(self._lines())

    def _lines(self) -> Iterator[bytes]:
        for line in split_lines(self.response.iter_content(chunk_size=None)):
            self.lines.append((time.monotonic() - self.started, line))
            yield line

    def next(self) -> Event:
        return next(self.events)

    def rest(self) -> list[Event]:
        return list(self.events)  # until the server closes the connection


def _driven(stack: Stack, owner: str = "main") -> tuple[JobStore, str]:
    """A job record written straight into Redis (never queued, so no worker touches it): the test moves it."""
    jobs = JobStore(redis.Redis.from_url(stack.redis_url), ttl_s=600)
    job_id = uuid.uuid4().hex
    record = JobRecord(job_id, "ingest", JobState.QUEUED, {"done": 0, "total": 3}, owner=owner)
    fields = record.to_json()
    fields.pop("job_id")
    jobs.write(job_id, fields)
    return jobs, job_id


def test_a_driven_job_shows_each_change_once_heartbeats_and_resumes(replica: Stack) -> None:
    jobs, job_id = _driven(replica)
    sent = time.monotonic()  # before the request: the server's MAX_WAIT_S starts after this, never before
    with _stream(replica, job_id) as response:
        reader = Reader(response)
        first = reader.next()
        assert (first.name, json.loads(first.data)["state"], first.retry_ms) == ("state", "queued", 1000)
        assert jobs.mark_running(job_id)
        running = reader.next()
        assert (running.name, json.loads(running.data)["state"]) == ("state", "running")
        jobs.set_progress(job_id, {"done": 1, "total": 3})
        step = reader.next()
        assert (step.name, json.loads(step.data)["progress"]) == ("progress", {"done": 1, "total": 3})
        assert reader.rest() == []  # nothing moves: the server closes the connection at MAX_WAIT_S
    elapsed = time.monotonic() - sent  # not reader.started: the reader's clock starts after the headers
    assert REPLICA_MAX_WAIT_S <= elapsed < REPLICA_MAX_WAIT_S + 3, elapsed
    beats = [at for at, line in reader.lines if line == b": heartbeat"]
    assert len(beats) >= 2 and all(b - a < REPLICA_HEARTBEAT_S + 1.5 for a, b in itertools.pairwise(beats))

    jobs.set_progress(job_id, {"done": 2, "total": 3})  # while no one is connected
    sent = time.monotonic()
    with _stream(replica, job_id, step.event_id) as response:
        reader = Reader(response)
        missed = reader.next()  # the change made in between, not the one already seen
        assert (missed.name, json.loads(missed.data)["progress"]["done"]) == ("progress", 2)
        jobs.mark_succeeded(job_id, {"documents": 3})
        end = reader.next()
        assert (end.name, json.loads(end.data)["result"]) == ("end", {"documents": 3})
        assert reader.rest() == []  # closed right after the end, long before MAX_WAIT_S
    assert time.monotonic() - sent < REPLICA_MAX_WAIT_S  # the whole request, so never flattered
    with _stream(replica, job_id, end.event_id) as response:
        assert response.status_code == 204
    with _stream(replica, job_id, step.event_id) as response:  # an older id: the end, at once
        assert [e.name for e in Reader(response).rest()] == ["end"]


def test_another_tenants_job_is_a_404_problem_and_streams_nothing(stack: Stack) -> None:
    _, job_id = _driven(stack, owner="a")
    with _stream(stack.as_key("b"), job_id) as response:
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/problem+json"
    with _stream(stack.as_key("a"), job_id) as response:
        assert response.status_code == 200
        assert Reader(response).next().name == "state"


def test_the_command_line_watches_a_job_to_its_end(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    accepted = stack.post("/api/v1/ask", json={"question": "tides?", "collection": "sse-live"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    argv = ["jobs", "watch", job_id, "--json", "--url", stack.url, "--api-key", KEYS["main"][0]]
    assert cli_main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    final = stack.get(f"/api/v1/jobs/{job_id}").json()
    assert lines[-1]["state"] == final["state"] == "succeeded"
    assert lines[-1]["result"] == final["result"] and final["result"]["passages"]
