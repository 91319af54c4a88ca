"""Webhooks end to end: the real stack POSTs finished jobs to a receiver running in this test process."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from client import verify_signature
from common.jobs import JobStore
from tests.integration.conftest import WEBHOOK_ENV, WEBHOOK_SECRET, Stack

COLLECTION = "hooks"
DOCUMENTS = [
    {"id": "tides", "text": "Tides are the rise and fall of sea levels caused by the pull of the Moon."},
    {"id": "espresso", "text": "Espresso is coffee brewed by forcing hot water through ground beans."},
]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class QuietHandler(BaseHTTPRequestHandler):
    def answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server on `host` (a free port), serving from a daemon thread until shut down."""
    server = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Receiver:
    """An HTTP server on `host` (free port) that records every POST and answers as planned per path."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.plans: dict[str, list[int]] = {}  # path -> statuses to answer in turn; then 200
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                    plan = receiver.plans.get(self.path, [])
                    status = plan.pop(0) if plan else 200
                self.answer(status)

        self.server = serve(Handler, host)

    def url(self, plan: list[int] | None = None) -> str:
        """A fresh path on this receiver, answered with `plan` (then 200)."""
        path = f"/hook/{uuid.uuid4().hex}"
        self.plans[path] = list(plan or [])
        return f"http://{self.host}:{self.server.server_address[1]}{path}"

    def posts(self, url: str) -> list[Received]:
        path = url.split(str(self.server.server_address[1]), 1)[1]
        with self.lock:
            return [item for item in self.received if item.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def delivery(stack: Stack, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    """The job once its webhook delivery has ended (delivered or failed); polls, bounded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = stack.wait_job(job_id)
        if (job.get("callback") or {}).get("state") in ("delivered", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"webhook of job {job_id} still not delivered nor failed: {job.get('callback')}")


def submit(stack: Stack, path: str, body: dict[str, Any]) -> str:
    response = stack.post(path, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def check_signed(post: Received, job_id: str) -> dict[str, Any]:
    assert verify_signature(WEBHOOK_SECRET, post.body, post.headers["X-Quarry-Signature"])
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Quarry-Job"] == job_id
    assert post.headers["User-Agent"].startswith("Quarry")
    body = post.json
    assert post.headers["X-Quarry-Event"] == body["event"] == f"job.{body['job']['state']}"
    assert body["event_id"] and body["sent_at"] and body["job"]["job_id"] == job_id
    return body


@pytest.fixture(scope="module")
def ingest_job(stack: Stack, receiver: Receiver) -> tuple[str, str]:
    url = receiver.url()
    body = {"documents": DOCUMENTS, "collection": COLLECTION, "callback_url": url}
    return submit(stack, "/api/v1/documents", body), url


def test_an_ingest_job_posts_once_when_it_ends(
    stack: Stack, receiver: Receiver, ingest_job: tuple[str, str]
) -> None:
    job_id, url = ingest_job
    job = delivery(stack, job_id)
    assert job["state"] == "succeeded", job
    assert job["callback"]["state"] == "delivered" and job["callback"]["attempts"] == 1
    assert job["callback"]["last_status"] == 200
    (post,) = receiver.posts(url)
    body = check_signed(post, job_id)
    assert body["job"]["kind"] == "ingest" and body["job"]["result"]["succeeded"] == len(DOCUMENTS)
    assert body["job"]["progress"] == job["progress"] and "callback" not in body["job"]


def test_an_ask_posts_its_result_signed(
    stack: Stack, receiver: Receiver, ingest_job: tuple[str, str]
) -> None:
    delivery(stack, ingest_job[0])
    url = receiver.url()
    job_id = submit(
        stack,
        "/api/v1/ask",
        {"question": "what pulls the tides?", "collection": COLLECTION, "callback_url": url},
    )
    job = delivery(stack, job_id)
    assert job["state"] == "succeeded" and job["callback"]["state"] == "delivered"
    (post,) = receiver.posts(url)
    body = check_signed(post, job_id)
    assert body["event"] == "job.succeeded"
    assert body["job"]["result"]["passages"][0]["doc_id"] == "tides"
    assert body["job"]["result"] == job["result"]


def test_a_failing_receiver_is_retried_until_it_answers(
    stack: Stack, receiver: Receiver, ingest_job: tuple[str, str]
) -> None:
    delivery(stack, ingest_job[0])
    url = receiver.url(plan=[500, 503])
    job_id = submit(
        stack, "/api/v1/ask", {"question": "espresso", "collection": COLLECTION, "callback_url": url}
    )
    job = delivery(stack, job_id)
    assert job["callback"]["state"] == "delivered", job["callback"]
    assert job["callback"]["attempts"] == 3 and job["callback"]["last_status"] == 200
    posts = receiver.posts(url)
    assert len(posts) == 3
    assert len({post.json["event_id"] for post in posts}) == 1  # one event, three attempts
    for post in posts:
        check_signed(post, job_id)


def test_a_refusing_receiver_is_not_retried_and_the_job_still_succeeds(
    stack: Stack, receiver: Receiver, ingest_job: tuple[str, str]
) -> None:
    delivery(stack, ingest_job[0])
    url = receiver.url(plan=[400])
    job_id = submit(
        stack, "/api/v1/ask", {"question": "espresso", "collection": COLLECTION, "callback_url": url}
    )
    job = delivery(stack, job_id)
    assert job["state"] == "succeeded" and job["error"] is None
    assert job["callback"]["state"] == "failed" and job["callback"]["attempts"] == 1
    assert job["callback"]["last_status"] == 400
    assert len(receiver.posts(url)) == 1


def test_cancelling_a_queued_job_posts_job_cancelled_once(stack: Stack, receiver: Receiver) -> None:
    """The API ends a queued job itself (200) and sends its one event; a second cancel is a 409."""
    url, job_id = receiver.url(), uuid.uuid4().hex
    jobs = JobStore(redis.Redis.from_url(stack.redis_url), 3600)
    jobs.create(job_id, "ingest", 1, {"collection": COLLECTION}, owner="main", callback_url=url)  # never sent
    response = stack.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled", response.text
    job = delivery(stack, job_id)
    assert job["state"] == "cancelled" and job["callback"]["state"] == "delivered"
    assert stack.delete(f"/api/v1/jobs/{job_id}").status_code == 409
    (post,) = receiver.posts(url)
    assert check_signed(post, job_id)["event"] == "job.cancelled"


def test_cancelling_a_running_job_posts_job_cancelled_when_it_stops(stack: Stack, receiver: Receiver) -> None:
    """A running job is asked to stop (202) and posts its one event when it has."""
    url = receiver.url()
    docs = [{"id": f"c{i}", "text": f"cancel me {i} " * 20} for i in range(400)]
    job_id = submit(
        stack, "/api/v1/documents", {"documents": docs, "collection": COLLECTION, "callback_url": url}
    )
    deadline = time.monotonic() + 60
    while stack.get(f"/api/v1/jobs/{job_id}").json()["state"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    response = stack.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 202 and response.json()["state"] == "running", response.text
    job = delivery(stack, job_id)
    assert job["state"] == "cancelled" and job["progress"]["done"] < len(docs)
    (post,) = receiver.posts(url)
    assert check_signed(post, job_id)["job"]["state"] == "cancelled"


# The stack opens WEBHOOK_ALLOWED_NETWORKS=["127.0.0.1/32"] (its receivers) and no host allowlist: every other
# internal address stays refused, however it is spelled (127.0.0.2 and 169.254.169.254 below, mostly).
REFUSED_CALLBACKS = [
    "ftp://127.0.0.1/x",
    "127.0.0.1:8080/hook",
    "http:///hook",
    "http://127.0.0.1/" + "a" * 2048,
    "http://user:pass@127.0.0.1:8080/hook",  # userinfo
    "http://127.0.0.1:8080\\@10.0.0.1/hook",  # a backslash: parsers disagree on where the host ends
    "http://localhost:8080/hook",  # localhost names mean ::1 too (RFC 6761), which is not opened
    "http://LOCALHOST:8080/hook",
    "http://localhost.:8080/hook",
    "http://10.1.2.3/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://2852039166/latest/meta-data/",  # the same, in decimal
    "http://0xa9fea9fe/latest/meta-data/",  # hex
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",  # IPv4-mapped IPv6
    "http://127.0.0.2:6379/",  # loopback beyond the one opened address, at Redis's port
    "http://2130706434:6379/",  # 127.0.0.2 in decimal
    "http://0x7f000002:6379/",
    "http://0x7f.2:6379/",
    "http://0177.0.0.2:6379/",  # octal
    "http://127.2:6379/",  # short dotted
    "http://127.0.0.2.:6379/",  # trailing dot
    "HTTP://127.0.0.2:6379/",
    "http://%31%32%37.0.0.2:6379/",  # percent-encoded host (urllib3 decodes it)
    "http://[::1]:6379/",
    "http://[::ffff:7f00:2]:6379/",
    "http://[::]:6379/",
    "http://0.0.0.0:6379/",
    "http://0:6379/",
    "http://100.64.0.1/hook",  # shared address space
    "http://224.0.0.1/hook",  # multicast
    "http://[fe80::1%25lo]/hook",  # link-local with a zone
    "http://no-such-host.invalid/hook",  # a name that does not exist
]


@pytest.mark.parametrize("callback_url", REFUSED_CALLBACKS)
def test_a_bad_callback_url_is_refused(stack: Stack, callback_url: str) -> None:
    for path, body in (
        ("/api/v1/ask", {"question": "q", "collection": COLLECTION, "callback_url": callback_url}),
        (
            "/api/v1/documents",
            {"documents": DOCUMENTS, "collection": COLLECTION, "callback_url": callback_url},
        ),
    ):
        response = stack.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert "callback_url" in response.json()["detail"]
    files = {"files": ("a.txt", b"some text")}
    form = {"collection": COLLECTION, "callback_url": callback_url}
    response = stack.post("/api/v1/documents", files=files, data=form)
    assert response.status_code == 422, response.text


# --- deliveries have their own pool ---

WEBHOOK_THREADS = 4  # the stack's webhook-worker pool (conftest: webhook_worker(4))
ASK_THREADS = 8  # the stack's ask-worker threads (conftest: ask_threads=8)
WEBHOOK_TIMEOUT_S = float(WEBHOOK_ENV["WEBHOOK_TIMEOUT_S"])


class HoldingReceiver:
    """A receiver whose every POST waits for `release`: a slow receiver at its worst."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.changed = threading.Condition()
        self.in_flight = 0
        self.arrivals: list[float] = []  # time.monotonic() of each POST's arrival
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.enter()
                receiver.release.wait(120)
                with receiver.changed:
                    receiver.in_flight -= 1
                self.answer(200)

        self.server = serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slow"

    def enter(self) -> None:
        with self.changed:
            self.in_flight += 1
            self.arrivals.append(time.monotonic())
            self.changed.notify_all()

    def wait_for_held(self, count: int, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.in_flight >= count, timeout_s)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_slow_receiver_never_holds_a_thread_questions_need(
    stack: Stack, ingest_job: tuple[str, str]
) -> None:
    """More held deliveries than the ask worker has threads: a plain question still gets answered while
    the receiver holds every webhook thread. Were deliveries on the ask worker's threads, they would
    hold all 8 (in-flight would read 8, not 4), and the question would wait for a delivery's deadline (a
    retry or the next delivery would arrive, changing in-flight)."""
    delivery(stack, ingest_job[0])  # the collection exists, its webhook is done: the pool is idle
    assert stack.run("/api/v1/ask", json={"question": "warm up", "collection": COLLECTION})["state"] == (
        "succeeded"
    )
    slow, asks = HoldingReceiver(), list[str]()
    try:
        callback = {"collection": COLLECTION, "callback_url": slow.url}
        asks += [
            submit(stack, "/api/v1/ask", {"question": f"what pulls the tides? {i}", **callback})
            for i in range(ASK_THREADS + 2)
        ]
        assert slow.wait_for_held(WEBHOOK_THREADS, 120), f"{slow.in_flight} deliveries arrived"
        held, held_since = slow.in_flight, slow.arrivals[0]
        job = stack.run("/api/v1/ask", json={"question": "espresso", "collection": COLLECTION})
        still_held, took = slow.in_flight, time.monotonic() - held_since
        assert job["state"] == "succeeded", job
        assert took < WEBHOOK_TIMEOUT_S, f"answered {took:.1f} s after the first delivery was held"
        assert held == still_held == WEBHOOK_THREADS, (held, still_held)  # none timed out, none more came
    finally:
        slow.release.set()
    try:
        for job_id in asks:  # the held deliveries, and the ones that waited for a thread, all arrive
            done = delivery(stack, job_id)
            assert done["state"] == "succeeded" and done["callback"]["state"] == "delivered", done
    finally:
        slow.close()
