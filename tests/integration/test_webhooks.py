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

from client import verify_signature
from tests.integration.conftest import WEBHOOK_SECRET, Stack

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


class Receiver:
    """An HTTP server on 127.0.0.1 (free port) that records every POST and answers as planned per path."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.plans: dict[str, list[int]] = {}  # path -> statuses to answer in turn; then 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                    plan = receiver.plans.get(self.path, [])
                    status = plan.pop(0) if plan else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, plan: list[int] | None = None) -> str:
        """A fresh path on this receiver, answered with `plan` (then 200)."""
        path = f"/hook/{uuid.uuid4().hex}"
        self.plans[path] = list(plan or [])
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def posts(self, url: str) -> list[Received]:
        path = url.split(str(self.server.server_address[1]), 1)[1]
        with self.lock:
            return [item for item in self.received if item.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
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


def test_a_cancelled_job_posts_its_final_state(stack: Stack, receiver: Receiver) -> None:
    """Whether the cancel finds the job queued, running or already ended, one POST tells how it ended."""
    url = receiver.url()
    docs = [{"id": f"c{i}", "text": f"cancel me {i} " * 20} for i in range(200)]
    job_id = submit(
        stack, "/api/v1/documents", {"documents": docs, "collection": COLLECTION, "callback_url": url}
    )
    assert stack.delete(f"/api/v1/jobs/{job_id}").status_code in (200, 202, 409)
    job = delivery(stack, job_id)
    (post,) = receiver.posts(url)
    assert check_signed(post, job_id)["job"]["state"] == job["state"]


@pytest.mark.parametrize(
    "callback_url",
    [
        "ftp://127.0.0.1/x",
        "127.0.0.1:8080/hook",
        "http:///hook",
        "http://localhost:8080/hook",  # not on WEBHOOK_ALLOWED_HOSTS
        "http://10.1.2.3/hook",
        "http://127.0.0.1/" + "a" * 2048,
    ],
)
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
