"""Idempotency claims on a real Redis (their Lua scripts run there), and `submit` around them.

A replay while the first request still runs is a 409, never the id of a job that may never exist; a
failed first request frees its key; a claim whose request died expires after `idempotency_pending_s`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, Response

from api import create_app
from api.idempotency import IdempotencyKeys, request_fingerprint
from api.services import services, submit
from common.contracts import ASK_QUEUE, Contract, Payload
from common.errors import Conflict, InvalidRequest, ServiceUnavailable
from common.settings import Settings
from tests.unit.redisdb import REDIS_URL, scratch_redis


class Probe(Payload):
    q: int


PROBE = Contract("quarry.test", ASK_QUEUE, Probe)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with scratch_redis("quarry:idem:*", needed_for="the idempotency scripts") as conn:
        yield conn


def scope() -> str:
    return "tenant-" + uuid.uuid4().hex


def stored(client: redis.Redis, keys: IdempotencyKeys, tenant: str, key: str) -> dict[str, Any]:
    raw = client.get(keys.name(tenant, key))
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


def test_a_claim_is_pending_briefly_then_done_for_the_full_ttl(client: redis.Redis) -> None:
    keys, tenant = IdempotencyKeys(client, ttl_s=3600, pending_s=30), scope()
    assert keys.claim(tenant, "k", "body", "job-1").new
    assert stored(client, keys, tenant, "k")["state"] == "pending"
    assert 0 < client.ttl(keys.name(tenant, "k")) <= 30
    with pytest.raises(Conflict, match="still being processed") as raised:
        keys.claim(tenant, "k", "body", "job-2")  # a replay while the first request runs
    assert raised.value.retry_after_s == 1
    assert keys.promote(tenant, "k", "body", "job-1")
    assert stored(client, keys, tenant, "k") == {"fingerprint": "body", "job_id": "job-1", "state": "done"}
    assert client.ttl(keys.name(tenant, "k")) > 30
    replay = keys.claim(tenant, "k", "body", "job-3")
    assert (replay.job_id, replay.new) == ("job-1", False)


def test_another_request_under_the_key_is_refused_pending_or_done(client: redis.Redis) -> None:
    keys, tenant = IdempotencyKeys(client, ttl_s=3600, pending_s=30), scope()
    keys.claim(tenant, "k", "body", "job-1")
    with pytest.raises(InvalidRequest, match="different request"):
        keys.claim(tenant, "k", "other body", "job-2")
    keys.promote(tenant, "k", "body", "job-1")
    with pytest.raises(InvalidRequest, match="different request"):
        keys.claim(tenant, "k", "other body", "job-2")
    assert keys.claim(scope(), "k", "other body", "job-3").new  # keys belong to their tenant


def test_a_retried_script_is_still_the_same_claim(client: redis.Redis) -> None:
    """The client retries a command whose reply was lost: the second run finds its own claim."""
    keys, tenant = IdempotencyKeys(client, ttl_s=3600, pending_s=30), scope()
    assert keys.claim(tenant, "k", "body", "job-1").new
    assert keys.claim(tenant, "k", "body", "job-1").new
    assert keys.promote(tenant, "k", "body", "job-1") and keys.promote(tenant, "k", "body", "job-1")
    keys.release(tenant, "k", "job-1")
    keys.release(tenant, "k", "job-1")
    assert client.get(keys.name(tenant, "k")) is None


def test_only_the_holder_releases_or_promotes_a_claim(client: redis.Redis) -> None:
    """A slow request whose pending claim expired and was taken by a retry must not free or take it."""
    keys, tenant = IdempotencyKeys(client, ttl_s=3600, pending_s=30), scope()
    keys.claim(tenant, "k", "body", "job-2")  # the retry's claim, after job-1's expired
    keys.release(tenant, "k", "job-1")
    assert not keys.promote(tenant, "k", "body", "job-1")
    assert stored(client, keys, tenant, "k")["job_id"] == "job-2"
    keys.release(tenant, "k", "job-2")
    assert keys.claim(tenant, "k", "body", "job-3").new


def test_a_claim_that_expired_under_its_request_is_written_again_when_done(client: redis.Redis) -> None:
    keys, tenant = IdempotencyKeys(client, ttl_s=3600, pending_s=30), scope()
    keys.claim(tenant, "k", "body", "job-1")
    client.delete(keys.name(tenant, "k"))  # its pending window ran out; nobody took the key
    assert keys.promote(tenant, "k", "body", "job-1")
    assert not keys.claim(tenant, "k", "body", "job-2").new


def test_a_claim_stored_before_the_pending_state_replays(client: redis.Redis) -> None:
    keys, tenant = IdempotencyKeys(client, ttl_s=3600, pending_s=30), scope()
    client.set(keys.name(tenant, "k"), json.dumps({"fingerprint": "body", "job_id": "old"}), ex=60)
    assert keys.claim(tenant, "k", "body", "job-2").job_id == "old"


def test_a_dead_redis_is_a_503() -> None:
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    with pytest.raises(ServiceUnavailable):
        IdempotencyKeys(down, ttl_s=60, pending_s=5).claim("t", "k", "body", "job-1")


# --- submit, through the app: its claim, record, queue, promote and release ---


class Enqueued(list[str]):
    """Stands in for the broker (the API's send): the job ids queued, in order."""

    def __call__(self, task_name: str, job_id: str, kwargs: dict[str, Any]) -> None:
        self.append(job_id)


@pytest.fixture
def app(client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """The API with one extra route whose `build` a test controls (`app.config["build"]`)."""
    app = create_app(Settings(redis_url=REDIS_URL, data_dir=tmp_path, idempotency_pending_s=30))

    def view() -> Response:
        build: Callable[[str], tuple[Probe, int]] = app.config["build"]
        return submit("ask", PROBE, build)

    app.add_url_rule("/api/v1/test-submit", "test_submit", view, methods=["POST"])
    with app.app_context():
        app.config["enqueued"] = Enqueued()
        monkeypatch.setattr(services(), "enqueue", app.config["enqueued"])
    return app


def post(app: Flask, key: str, body: dict[str, Any] | None = None) -> Any:
    return app.test_client().post(
        "/api/v1/test-submit", json=body or {"q": 1}, headers={"Idempotency-Key": key}
    )


def test_a_replay_during_the_first_request_is_a_409_then_the_job(app: Flask, client: redis.Redis) -> None:
    key, entered, proceed = uuid.uuid4().hex, threading.Event(), threading.Event()

    def slow_build(job_id: str) -> tuple[Probe, int]:
        entered.set()
        assert proceed.wait(10)
        return Probe(q=1), 1

    app.config["build"] = slow_build
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, app, key)
        assert entered.wait(10)
        during = post(app, key)
        assert during.status_code == 409 and during.mimetype == "application/problem+json"
        assert during.headers["Retry-After"] == "1" and "still being processed" in during.json["detail"]
        assert app.config["enqueued"] == []  # nothing to point a replay at yet
        proceed.set()
        done = first.result(10)
    assert done.status_code == 202 and "Idempotent-Replayed" not in done.headers
    job_id = done.json["job_id"]
    assert app.config["enqueued"] == [job_id]
    assert client.exists(f"quarry:job:{job_id}")
    after = post(app, key)
    assert after.status_code == 202 and after.headers["Idempotent-Replayed"] == "true"
    assert after.json["job_id"] == job_id and app.config["enqueued"] == [job_id]


def test_a_failed_first_request_frees_its_key(app: Flask) -> None:
    key = uuid.uuid4().hex

    def refused(job_id: str) -> tuple[Probe, int]:
        raise InvalidRequest("refused by build")

    app.config["build"] = refused
    assert post(app, key).status_code == 422
    assert post(app, key).status_code == 422  # not a replay of the failure, nor a 409: it ran again
    app.config["build"] = lambda job_id: (Probe(q=1), 1)
    retried = post(app, key)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers
    assert app.config["enqueued"] == [retried.json["job_id"]]


def test_a_claim_whose_request_died_frees_the_key_when_it_expires(app: Flask, client: redis.Redis) -> None:
    """A request killed after claiming leaves a pending claim with the short TTL, never the long one."""
    key = uuid.uuid4().hex
    with app.test_request_context("/api/v1/test-submit", method="POST", json={"q": 1}):
        keys = services().idempotency
        keys.claim("", key, request_fingerprint(), "dead-job")  # ... and then its process was killed
    name = keys.name("", key)
    assert 0 < client.ttl(name) <= 30
    app.config["build"] = lambda job_id: (Probe(q=1), 1)
    assert post(app, key).status_code == 409  # the dead request's job may still come: not yet
    client.pexpire(name, 50)  # its pending window ends
    deadline = time.monotonic() + 5
    while client.exists(name) and time.monotonic() < deadline:
        time.sleep(0.02)
    retried = post(app, key)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers
    assert app.config["enqueued"] == [retried.json["job_id"]] and retried.json["job_id"] != "dead-job"
