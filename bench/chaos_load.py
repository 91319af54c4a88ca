"""The chaos run's clients: mixed ingest, replace, delete and ask requests, and a log of every job they got.

Clients behave like a careful real one: every submission carries an `Idempotency-Key`, and a 5xx, 409
("still being processed"), 429 or a broken connection is retried with the same key until `retry_s` runs
out. A request given up on may still have created a job, so it is logged as `unresolved` and the verdict
counts its writes as possible (never as certain).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from common.types import Document

RETRY_STATUSES = {409, 429, 500, 502, 503, 504}
TERMINAL = ("succeeded", "failed", "cancelled")
TOPICS = ["glaciers", "volcanoes", "tides", "bees", "comets", "forests", "deserts", "coral"]
VERSIONS = 4  # texts per document id: re-ingesting one already stored is a skip, another is a replace


def document(doc_id: str, version: int) -> Document:
    """Version `version` of a document: more sentences per version, so versions differ in chunk count."""
    topic = TOPICS[sum(map(ord, doc_id)) % len(TOPICS)]
    text = " ".join(
        f"Sentence {n} of {doc_id} in revision {version} explains how {topic} change over the seasons."
        for n in range(10 + 6 * version)
    )
    return Document(id=doc_id, text=text, title=f"Chaos notes {doc_id}")


@dataclass
class Op:
    """One request the load sent, and what became of its job."""

    kind: str  # ingest | replace | delete_doc | delete_collection | ask
    collection: str
    docs: dict[str, int]  # doc id -> version written (ingest, replace) or -1 (delete_doc)
    started: float  # wall clock before the first attempt: nothing it does can happen earlier
    status: str = "pending"  # accepted | refused | unresolved
    http: list[int] = field(default_factory=list)  # every answer's status (0: connection error)
    job_id: str | None = None
    first_end: str | None = None  # the first terminal state a client read
    first_error: str | None = None  # the job's error as read then
    ended: float | None = None  # wall clock by which the job had ended (finished_at, else when read)
    final: str | None = None  # the state read again at the verdict
    error: str | None = None
    question: str = ""
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # doc id -> its outcome


@dataclass
class Universe:
    """The fixed set of collections and document ids the load touches."""

    collections: list[str]
    doc_ids: list[str]

    @classmethod
    def make(cls, collections: int, docs: int) -> Universe:
        return cls([f"chaos-{chr(97 + i)}" for i in range(collections)], [f"d{i:02d}" for i in range(docs)])


class Client:
    """One thread's HTTP session; `call` retries like a real client, with one Idempotency-Key."""

    def __init__(self, url: str, retry_s: float) -> None:
        self.url = url
        self.retry_s = retry_s
        self.session = requests.Session()

    def call(self, op: Op, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        key = uuid.uuid4().hex
        deadline = time.monotonic() + self.retry_s
        while True:
            wait = 0.5
            try:
                response = self.session.request(
                    method, self.url + path, json=body, headers={"Idempotency-Key": key}, timeout=30
                )
                op.http.append(response.status_code)
                if response.status_code == 202:
                    op.status, op.job_id = "accepted", str(response.json()["job_id"])
                    return
                if response.status_code not in RETRY_STATUSES:
                    op.status, op.error = "refused", response.text[:300]
                    return
                wait = min(5.0, float(response.headers.get("Retry-After", 0.5)))
            except requests.RequestException as exc:
                op.http.append(0)
                op.error = str(exc)[:300]
            if time.monotonic() + wait > deadline:
                op.status = "unresolved"  # it may have created a job we never heard of
                return
            time.sleep(wait)


class Load:
    """Submitters and one watcher; `ops` is the client-side log every verdict is judged against."""

    def __init__(self, url: str, universe: Universe, seed: int, *, retry_s: float = 60.0) -> None:
        self.url = url
        self.universe = universe
        self.rng = random.Random(seed)
        self.retry_s = retry_s
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.requests_left = 0

    def next_op(self) -> Op | None:
        """Draw the next request (under the lock: one seeded RNG for every thread); None once the budget
        of requests is spent."""
        with self.lock:
            if self.requests_left <= 0:
                return None
            self.requests_left -= 1
            rng, u = self.rng, self.universe
            kind = rng.choices(
                ["ingest", "replace", "delete_doc", "ask", "delete_collection"], [30, 30, 14, 22, 2]
            )[0]
            collection = rng.choice(u.collections)
            if kind in ("ingest", "replace"):
                ids = rng.sample(u.doc_ids, rng.randint(1, 4))
                docs = {doc_id: rng.randrange(VERSIONS) for doc_id in ids}
            elif kind == "delete_doc":
                docs = {rng.choice(u.doc_ids): -1}
            else:
                docs = {}
            op = Op(kind, collection, docs, started=time.time())
            op.question = f"How do {rng.choice(TOPICS)} change over the seasons?"
            self.ops.append(op)
            return op

    def in_flight(self) -> int:
        with self.lock:
            return sum(1 for op in self.ops if op.status == "accepted" and op.first_end is None)

    def submitter(self, max_in_flight: int) -> None:
        client = Client(self.url, self.retry_s)
        while not self.stop.is_set():
            if self.in_flight() >= max_in_flight:
                time.sleep(0.2)
                continue
            op = self.next_op()
            if op is None:
                return
            send(client, op)


def send(client: Client, op: Op) -> None:
    """Submit one drawn request."""
    c = op.collection
    if op.kind in ("ingest", "replace"):
        docs = [
            {"id": d.id, "title": d.title, "text": d.text}
            for d in (document(doc_id, version) for doc_id, version in op.docs.items())
        ]
        on_duplicate = "replace" if op.kind == "replace" else "skip"
        body = {"collection": c, "documents": docs, "on_duplicate": on_duplicate}
        client.call(op, "POST", "/api/v1/documents", body)
    elif op.kind == "delete_doc":
        client.call(op, "DELETE", f"/api/v1/collections/{c}/documents/{next(iter(op.docs))}")
    elif op.kind == "delete_collection":
        client.call(op, "DELETE", f"/api/v1/collections/{c}")
    else:
        client.call(op, "POST", "/api/v1/ask", {"question": op.question, "collection": c, "top_k": 3})


def observe(session: requests.Session, url: str, op: Op) -> dict[str, Any] | None:
    """Read the job once; note its first end (and when it happened). None when it could not be read."""
    try:
        response = session.get(f"{url}/api/v1/jobs/{op.job_id}", timeout=10)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        if response.status_code == 404:
            op.error = "job record not found (404)"
        return None
    body: dict[str, Any] = response.json()
    if body["state"] in TERMINAL and op.first_end is None:
        op.ended = min(time.time(), parse_time(body.get("finished_at")) or time.time())
        op.first_end, op.first_error = body["state"], body.get("error")
    return body


def parse_time(stamp: str | None) -> float | None:
    """The job record's ISO stamp (UTC, `Z`) as a wall clock value."""
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def fetch_reports(session: requests.Session, url: str, op: Op) -> bool:
    """Every document outcome of an ingest job (paged); False when they could not be read."""
    reports: dict[str, dict[str, Any]] = {}
    offset: int | None = 0
    while offset is not None:
        try:
            response = session.get(
                f"{url}/api/v1/jobs/{op.job_id}/documents",
                params={"offset": offset, "limit": 100},
                timeout=10,
            )
        except requests.RequestException:
            return False
        if response.status_code != 200:
            return False
        page = response.json()
        reports.update({item["doc_id"]: item for item in page["items"]})
        offset = page.get("next_offset")
    op.reports = reports
    return True
