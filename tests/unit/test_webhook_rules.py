"""Webhooks without a network: signatures, URL checks, retry rules, the once-only trigger, one attempt."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from client import verify_signature
from common.callback_urls import check_callback_url, host_allowed
from common.job_record import JobState
from common.job_schema import BEAT_PREFIX, Field
from common.jobs import JobStore
from common.retries import webhook_backoff_s
from common.settings import Settings
from common.webhooks import (
    WebhookTrigger,
    classify,
    headers,
    payload,
    sign,
)
from workers.delivery import DeliveryResult, deliver
from workers.webhooks import attempt_delivery

URL = "http://127.0.0.1:9/hook"


class FakeRedis:
    """The few hash commands JobStore and the trigger use, in memory."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.published: list[tuple[str, str]] = []

    def _hash(self, key: str) -> dict[bytes, bytes]:
        return self.hashes.setdefault(key, {})

    def hget(self, key: str, name: str) -> bytes | None:
        return self.hashes.get(key, {}).get(name.encode())

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    def hset(self, key: str, name: str | None = None, value: str | None = None, mapping: Any = None) -> int:
        items = dict(mapping or {})
        if name is not None:
            items[name] = value
        self._hash(key).update({k.encode(): str(v).encode() for k, v in items.items()})
        return len(items)

    def hsetnx(self, key: str, name: str, value: str) -> bool:
        if name.encode() in self._hash(key):
            return False
        self._hash(key)[name.encode()] = value.encode()
        return True

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        return len(mapping)  # the indexes of jobs (JobStore.create): no rule here reads them

    def zremrangebyscore(self, key: str, low: Any, high: Any) -> int:
        return 0

    def zremrangebyrank(self, key: str, start: int, end: int) -> int:
        return 0

    def expire(self, key: str, ttl: int) -> bool:
        return True

    def info(self, section: str) -> dict[str, Any]:
        return {"uptime_in_seconds": 3600}  # up long before any beat in these tests

    def get(self, key: str) -> None:
        return None

    def publish(self, channel: str, message: str) -> int:
        self.published.append((channel, message))
        return 0

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def register_script(self, source: str) -> Callable[..., int]:
        """Only the state guard's script (common.transitions), run on the in-memory hashes."""
        assert "unpack(ARGV, n + 5)" in source, "this fake knows only the state guard's script"

        def move(keys: list[str], args: list[Any]) -> int:
            token_field, token, count = args[1], args[2], int(args[3])
            if self.hget(keys[0], token_field) == str(token).encode():
                return 1  # a repeat of this very move
            if self.hget(keys[0], "state") not in {str(state).encode() for state in args[4 : 4 + count]}:
                return 0
            rest = args[4 + count :]
            self.hset(keys[0], mapping={token_field: token, **dict(zip(rest[::2], rest[1::2], strict=True))})
            return 1

        return move


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.calls: list[Callable[[], Any]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        method = getattr(self.redis, name)
        return lambda *args, **kwargs: self.calls.append(lambda: method(*args, **kwargs))

    def execute(self) -> list[Any]:
        return [call() for call in self.calls]


@pytest.fixture
def sent() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def jobs(sent: list[tuple[str, dict[str, Any]]]) -> JobStore:
    client = FakeRedis()
    trigger = WebhookTrigger(client, lambda name, kwargs: sent.append((name, kwargs)))  # type: ignore[arg-type]
    return JobStore(client, ttl_s=60, on_finish=trigger)  # type: ignore[arg-type]


# --- signatures ---


def test_server_signature_verifies_with_the_client_helper() -> None:
    body = b'{"event":"job.succeeded"}'
    header = sign("s3cret", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature("s3cret", body, header)
    assert verify_signature(b"s3cret", body, header.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        ("other", b"{}", sign("s3cret", b"{}")),  # wrong secret
        ("s3cret", b"{} ", sign("s3cret", b"{}")),  # body changed
        ("s3cret", b"{}", None),  # unsigned
        ("s3cret", b"{}", ""),
        ("s3cret", b"{}", sign("s3cret", b"{}").removeprefix("sha256=")),  # no scheme
        ("s3cret", b"{}", "sha1=" + "0" * 40),
        ("s3cret", b"{}", "sha256=é"),  # non-ASCII never raises
        ("", b"{}", sign("", b"{}")),  # no secret configured on the receiver
    ],
)
def test_bad_signatures_are_refused(secret: str, body: bytes, header: str | None) -> None:
    assert not verify_signature(secret, body, header)


# --- URLs ---


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://hooks.example.com/a?b=c", "http://h"])
def test_good_callback_urls(url: str) -> None:
    assert check_callback_url(url) == url


def test_host_allowlist() -> None:
    allowed = ["hooks.example.com", "*.internal.example"]
    assert host_allowed("anything.test", [])
    assert host_allowed("HOOKS.example.com.", allowed)
    assert host_allowed("a.b.internal.example", allowed)
    assert not host_allowed("internal.example", allowed)
    assert not host_allowed("evil.com", allowed)
    assert not host_allowed("hooks.example.com.evil.com", allowed)
    assert not host_allowed("xhooks.example.com", allowed)


@pytest.fixture
def app_client(tmp_path: Path) -> Any:
    # Unreachable Redis: a refused callback must be refused before anything is stored or queued.
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        data_dir=tmp_path,
        webhook_allowed_hosts=["hooks.example.com"],
    )
    return create_app(settings).test_client()


@pytest.mark.parametrize(
    "callback_url",
    ["ftp://hooks.example.com/x", "hooks.example.com/x", "https://evil.example.com/x", 42],
)
def test_bad_callback_url_is_a_422_problem(app_client: Any, callback_url: Any) -> None:
    documents = {"documents": [{"text": "t"}], "callback_url": callback_url}
    for path, body in (
        ("/api/v1/ask", {"question": "q", "callback_url": callback_url}),
        ("/api/v1/documents", documents),
    ):
        response = app_client.post(path, json=body)
        assert response.status_code == 422, response.json
        assert response.mimetype == "application/problem+json"
        assert "callback_url" in response.json["detail"]
    form = {"callback_url": str(callback_url), "files": (io.BytesIO(b"some text"), "a.txt")}
    response = app_client.post("/api/v1/documents", data=form, content_type="multipart/form-data")
    assert response.status_code == 422, response.json
    assert "callback_url" in response.json["detail"]


# --- retries ---


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (None, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (301, "give_up"),
        (400, "give_up"),
        (401, "give_up"),
        (404, "give_up"),
        (410, "give_up"),
    ],
)
def test_retry_classification(status: int | None, verdict: str) -> None:
    assert classify(status) == verdict


def test_backoff_doubles_is_capped_and_jittered() -> None:
    low = [webhook_backoff_s(n, 2.0, 60.0, rand=lambda: 0.0) for n in range(1, 8)]
    high = [webhook_backoff_s(n, 2.0, 60.0, rand=lambda: 1.0) for n in range(1, 8)]
    assert high == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert low == [h / 2 for h in high]


# --- the once-only trigger ---


def test_a_job_without_callback_sends_nothing(jobs: JobStore, sent: list[Any]) -> None:
    jobs.create("j", "ask", 1, {})
    jobs.mark_succeeded("j", {"passages": []})
    assert sent == []


def test_every_end_of_a_job_sends_one_event(jobs: JobStore, sent: list[Any]) -> None:
    jobs.create("j", "ask", 1, {}, callback_url=URL)
    assert jobs.get("j").callback == {"url": URL, "state": "pending", "attempts": 0, "last_status": None}  # type: ignore[union-attr]
    jobs.cancel("j")  # queued: ends now (the API's path)
    jobs.mark_succeeded("j", {})  # a racing worker
    jobs.mark_failed("j", "late failure")  # a redelivery
    assert [name for name, _ in sent] == ["quarry.webhook"]
    assert sent[0][1]["job_id"] == "j"
    stored = jobs.client.hget(jobs.key("j"), Field.CALLBACK_EVENT)
    assert json.loads(stored or "null") == sent[0][1]["event_id"]


def test_a_trigger_that_cannot_queue_records_it_and_never_raises() -> None:
    client = FakeRedis()

    def broker_down(name: str, kwargs: dict[str, Any]) -> None:
        raise ConnectionError("broker down")

    jobs = JobStore(client, ttl_s=60, on_finish=WebhookTrigger(client, broker_down))  # type: ignore[arg-type]
    jobs.create("j", "ask", 1, {}, callback_url=URL)
    jobs.mark_succeeded("j", {"ok": True})
    record = jobs.get("j")
    assert record is not None and record.state is JobState.SUCCEEDED
    assert record.callback is not None and record.callback["state"] == "failed"
    assert "could not be queued" in record.callback["last_error"]


def test_a_lost_worker_is_settled_once_and_notified(jobs: JobStore, sent: list[Any]) -> None:
    jobs.create("j", "ask", 1, {}, callback_url=URL)
    jobs.mark_running("j")
    beat = {"at": "2026-01-01T00:00:00.000Z", "until": 1.0, "host": "h", "pid": 1}
    jobs.client.hset(jobs.key("j"), BEAT_PREFIX + "t", json.dumps(beat))
    record = jobs.get("j")
    assert record is not None and record.state is JobState.FAILED  # derived at read time
    jobs.settle(record)
    assert jobs.get("j") == record  # stored as it read: a client sees no change
    jobs.settle(record)  # a second redelivery: already stored
    stored = json.loads(jobs.client.hget(jobs.key("j"), "state") or "null")
    assert stored == "failed" and len(sent) == 1


# --- one delivery attempt ---


def _poster(outcome: int | None, seen: list[dict[str, Any]]) -> Callable[..., DeliveryResult]:
    """A transport that answers `outcome` (None: no answer), as `workers.delivery.deliver` would."""

    def post(url: str, body: bytes, head: dict[str, str], settings: Settings) -> DeliveryResult:
        seen.append({"url": url, "data": body, "headers": head})
        if outcome is None:
            return DeliveryResult(None, "ConnectionRefusedError: refused", "retry")
        error = None if 200 <= outcome < 300 else f"HTTP {outcome}"
        return DeliveryResult(outcome, error, classify(outcome))

    return post


SETTINGS = Settings(webhook_secret="k", webhook_max_retries=2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "attempt", "verdict", "state"),
    [
        (200, 1, "delivered", "delivered"),
        (500, 1, "retry", "pending"),
        (429, 2, "retry", "pending"),
        (None, 1, "retry", "pending"),  # no answer
        (None, 3, "give_up", "failed"),  # retries spent
        (503, 3, "give_up", "failed"),
        (400, 1, "give_up", "failed"),
    ],
)
def test_one_attempt_is_recorded_and_never_touches_the_job(
    jobs: JobStore, outcome: int | None, attempt: int, verdict: str, state: str
) -> None:
    jobs.create("j", "ask", 1, {}, callback_url=URL)
    jobs.mark_succeeded("j", {"passages": ["p"]})
    callback = {"url": URL, "state": "pending", "attempts": attempt - 1}  # earlier attempts failed
    jobs.write("j", {"callback": callback})
    seen: list[dict[str, Any]] = []
    assert attempt_delivery(jobs, SETTINGS, "j", "ev1", post=_poster(outcome, seen)) == verdict
    record = jobs.get("j")
    assert record is not None and record.state is JobState.SUCCEEDED and record.result == {"passages": ["p"]}
    assert record.callback is not None
    assert (record.callback["state"], record.callback["attempts"]) == (state, attempt)
    assert record.callback["last_status"] == outcome
    assert (record.callback["last_error"] is None) == (verdict == "delivered")
    (call,) = seen
    assert call["url"] == URL
    assert verify_signature("k", call["data"], call["headers"]["X-Quarry-Signature"])
    body = json.loads(call["data"])
    assert body["event"] == "job.succeeded" and body["event_id"] == "ev1" and body["sent_at"]
    assert body["job"]["result"] == {"passages": ["p"]} and "callback" not in body["job"]


def test_an_ended_delivery_is_not_sent_again(jobs: JobStore) -> None:
    jobs.create("j", "ask", 1, {}, callback_url=URL)
    jobs.mark_succeeded("j", {})
    seen: list[dict[str, Any]] = []
    assert attempt_delivery(jobs, SETTINGS, "j", "ev1", post=_poster(200, seen)) == "delivered"
    assert attempt_delivery(jobs, SETTINGS, "j", "ev1", post=_poster(200, seen)) is None  # redelivered
    assert attempt_delivery(jobs, SETTINGS, "gone", "ev2", post=_poster(200, seen)) is None
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("url", "settings", "lookups", "reason"),
    [
        (URL, Settings(webhook_allowed_hosts=["hooks.example.com"]), [], "WEBHOOK_ALLOWED_HOSTS"),
        ("http://hooks.example.com/h", Settings(), ["hooks.example.com"], "127.0.0.1, which is not public"),
    ],
)
def test_a_callback_refused_at_delivery_fails_without_a_request(
    jobs: JobStore, url: str, settings: Settings, lookups: list[str], reason: str
) -> None:
    """The real transport: what the policy refuses now (the allowlist changed, or the name points inside
    since it was accepted) gives up at once, not retried, and says why; nothing is connected to."""
    jobs.create("j", "ask", 1, {}, callback_url=url)
    jobs.mark_failed("j", "boom")
    looked_up: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["127.0.0.1"]

    def post(url: str, body: bytes, head: dict[str, str], settings: Settings) -> DeliveryResult:
        return deliver(url, body, head, settings, resolver=resolver)

    assert attempt_delivery(jobs, settings, "j", "ev", post=post) == "give_up"
    callback = jobs.get("j").callback  # type: ignore[union-attr]
    assert callback is not None and callback["state"] == "failed" and callback["attempts"] == 1
    assert reason in callback["last_error"] and callback["last_status"] is None
    assert looked_up == lookups


def test_a_start_racing_a_cancel_does_not_reopen_the_job(
    jobs: JobStore, sent: list[tuple[str, dict[str, Any]]]
) -> None:
    jobs.create("j", "ask", 1, {}, callback_url=URL)
    jobs.cancel("j")  # queued: cancelled now, its webhook queued...
    assert not jobs.mark_running("j")  # ...and a worker that had read it queued may not start it
    jobs.mark_succeeded("j", {"passages": []})  # nor end it again: the first end is final
    jobs.cancel("j")
    record = jobs.get("j")
    assert record is not None and record.state is JobState.CANCELLED and record.result is None
    assert len(sent) == 1
    seen: list[dict[str, Any]] = []
    assert attempt_delivery(jobs, SETTINGS, "j", "ev", post=_poster(200, seen)) == "delivered"
    assert json.loads(seen[0]["data"])["job"]["state"] == "cancelled"


def test_a_running_job_is_not_cancelled_by_the_api_only_asked_to_stop(jobs: JobStore) -> None:
    jobs.create("j", "ask", 1, {})
    assert jobs.mark_running("j")
    jobs.cancel("j")
    assert jobs.get("j").state is JobState.RUNNING and jobs.cancel_requested("j")  # type: ignore[union-attr]
    jobs.mark_cancelled("j")  # the task, at its next checkpoint
    assert jobs.get("j").state is JobState.CANCELLED  # type: ignore[union-attr]


def test_unsigned_without_a_secret() -> None:
    store = JobStore(FakeRedis(), ttl_s=60)  # type: ignore[arg-type]
    record = store.create("j", "ask", 1, {})
    body = payload(record, "ev")
    head = headers(record, "ev", body, None)
    assert "X-Quarry-Signature" not in head
    assert head["X-Quarry-Job"] == "j" and head["Content-Type"] == "application/json"
    assert head["X-Quarry-Event"] == "job.queued" and head["User-Agent"].startswith("Quarry")
