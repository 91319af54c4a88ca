"""The registry of ready workers: entries expire by Redis's clock, each queue is checked on its own, a clean
stop withdraws at once, a refresh keeps an entry alive; the micro-batcher runs a warm-up in its thread; and
/readyz names what is missing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis as redis_py

from api import create_app
from api.services import Services
from common.errors import ServiceUnavailable
from common.readiness import KEY_PREFIX, Announcer, ReadyWorkers
from common.settings import Settings
from workers.batcher import MicroBatcher


class FakeRedis:
    """The sorted-set commands the registry sends, on a clock the test moves (Redis's `TIME`)."""

    def __init__(self) -> None:
        self.now = 1_000_000.25
        self.sets: dict[str, dict[str, float]] = {}
        self.ttls: dict[str, int] = {}
        self.down = False
        self.started = 0.0  # when this Redis (re)started, on its clock

    def info(self, section: str) -> dict[str, Any]:
        return {"uptime_in_seconds": int(self.now - self.started)}

    def time(self) -> tuple[int, int]:
        self._check()
        return int(self.now), round((self.now % 1) * 1e6)

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        self.sets.setdefault(key, {}).update(mapping)

    def zremrangebyscore(self, key: str, low: str, high: float) -> None:
        entries = self.sets.get(key, {})
        for member in [m for m, score in entries.items() if score <= high]:
            del entries[member]

    def expire(self, key: str, seconds: int) -> None:
        self.ttls[key] = seconds

    def zrem(self, key: str, member: str) -> None:
        self.sets.get(key, {}).pop(member, None)

    def zrange(self, key: str, start: int, end: int, withscores: bool) -> list[tuple[bytes, float]]:
        return [(member.encode(), score) for member, score in sorted(self.sets.get(key, {}).items())]

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def _check(self) -> None:
        if self.down:
            raise redis_py.ConnectionError("Connection refused")


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    def execute(self) -> list[Any]:
        self.redis._check()
        return [getattr(self.redis, name)(*args, **kwargs) for name, args, kwargs in self.calls]


QUEUES = ("parse", "ingest", "ask", "webhooks")


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


def registry(redis: FakeRedis, ttl_s: float = 15) -> ReadyWorkers:
    return ReadyWorkers(redis, ttl_s=ttl_s)  # type: ignore[arg-type]


def test_one_key_per_queue_scored_by_expiry_on_redis_clock(redis: FakeRedis) -> None:
    registry(redis).mark(["ask"], "ask@box:42")
    assert redis.sets == {KEY_PREFIX + "ask": {"ask@box:42": redis.now + 15}}
    assert redis.ttls[KEY_PREFIX + "ask"] >= 15  # a queue nobody refreshes loses its key too


def test_an_entry_holds_until_its_expiry_and_not_after(redis: FakeRedis) -> None:
    workers = registry(redis, ttl_s=15)
    workers.mark(["ingest"], "ingest@box:7")
    redis.now += 14.9
    assert workers.ready(["ingest"]) == {"ingest": ["ingest@box:7"]}
    redis.now += 0.2
    assert workers.ready(["ingest"]) == {"ingest": []}
    assert workers.missing(["ingest"]) == ["ingest"]


def test_each_queue_needs_its_own_worker(redis: FakeRedis) -> None:
    workers = registry(redis)
    workers.mark(["parse", "webhooks"], "both@box:1")
    workers.mark(["ask"], "ask@box:2")
    assert workers.missing(QUEUES) == ["ingest"]
    workers.mark(["ingest"], "ingest@box:3")
    assert workers.missing(QUEUES) == []
    assert workers.ready(QUEUES)["webhooks"] == ["both@box:1"]


def test_one_worker_lapsing_leaves_the_others_ready(redis: FakeRedis) -> None:
    workers = registry(redis, ttl_s=15)
    workers.mark(["ask"], "ask0@box:1")
    redis.now += 10
    workers.mark(["ask"], "ask1@box:2")
    redis.now += 10  # the first lapsed, the second holds
    assert workers.ready(["ask"]) == {"ask": ["ask1@box:2"]}


def test_a_refresh_pushes_the_expiry_and_prunes_lapsed_entries(redis: FakeRedis) -> None:
    workers = registry(redis, ttl_s=15)
    workers.mark(["ask"], "gone@box:1")
    workers.mark(["ask"], "alive@box:2")
    for _ in range(5):  # 50 s, refreshed every 10 s
        redis.now += 10
        workers.mark(["ask"], "alive@box:2")
    assert workers.ready(["ask"]) == {"ask": ["alive@box:2"]}
    assert set(redis.sets[KEY_PREFIX + "ask"]) == {"alive@box:2"}


def test_entries_written_before_redis_restarted_count_for_nothing(redis: FakeRedis) -> None:
    """A Redis restarted from its AOF (or on copied data) holds entries of workers that may be gone."""
    workers = registry(redis, ttl_s=15)
    workers.mark(["ask"], "ask@box:1")
    redis.now += 4
    redis.started = redis.now - 0.5  # restarted half a second ago, the entry has 11 s left
    assert workers.ready(["ask"]) == {"ask": []}
    redis.now += 5
    workers.mark(["ask"], "ask@box:1")  # the live worker's next refresh
    assert workers.ready(["ask"]) == {"ask": ["ask@box:1"]}


def test_unmark_withdraws_at_once(redis: FakeRedis) -> None:
    workers = registry(redis)
    workers.mark(["parse"], "parse@box:1")
    workers.unmark(["parse"], "parse@box:1")
    assert workers.missing(["parse"]) == ["parse"]


def test_redis_away_is_service_unavailable(redis: FakeRedis) -> None:
    redis.down = True
    with pytest.raises(ServiceUnavailable, match="Redis unreachable"):
        registry(redis).ready(QUEUES)


def test_the_announcer_marks_refreshes_and_withdraws(redis: FakeRedis) -> None:
    workers = registry(redis, ttl_s=15)
    announcer = Announcer(workers, ["ask"], "ask@box:9", refresh_s=0.01)
    announcer.start()
    try:
        first = redis.sets[KEY_PREFIX + "ask"]["ask@box:9"]
        redis.now += 100  # far past the first expiry: only a refresh keeps the entry
        wait_for(lambda: workers.ready(["ask"]) == {"ask": ["ask@box:9"]})
        assert redis.sets[KEY_PREFIX + "ask"]["ask@box:9"] > first
    finally:
        announcer.stop()
    assert workers.missing(["ask"]) == ["ask"]


def test_the_announcer_marks_only_while_its_condition_holds(redis: FakeRedis) -> None:
    workers = registry(redis, ttl_s=15)
    siblings_warm = threading.Event()
    announcer = Announcer(workers, ["ingest"], "ingest@box:4", refresh_s=0.01, when=siblings_warm.is_set)
    announcer.start()
    try:
        time.sleep(0.05)  # several refreshes: none may mark
        assert workers.missing(["ingest"]) == ["ingest"] and KEY_PREFIX + "ingest" not in redis.sets
        siblings_warm.set()
        wait_for(lambda: workers.ready(["ingest"]) == {"ingest": ["ingest@box:4"]})
    finally:
        announcer.stop()


def test_the_announcer_survives_redis_away(redis: FakeRedis) -> None:
    workers = registry(redis, ttl_s=15)
    redis.down = True
    announcer = Announcer(workers, ["webhooks"], "webhooks@box:3", refresh_s=0.01)
    announcer.start()  # logged, not raised
    try:
        redis.down = False
        wait_for(lambda: workers.ready(["webhooks"]) == {"webhooks": ["webhooks@box:3"]})
    finally:
        announcer.stop()


def wait_for(check: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll a condition with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_warm_up_runs_in_the_batcher_thread_before_later_items() -> None:
    """Models are built where questions are answered, and the first question waits behind the warm-up."""
    seen: list[tuple[str, str]] = []
    release = threading.Event()

    def answer(items: Sequence[int]) -> list[int]:
        seen.extend(("item", threading.current_thread().name) for _ in items)
        return list(items)

    def warm() -> str:
        release.wait(10)
        seen.append(("warm", threading.current_thread().name))
        return "warm"

    batcher: MicroBatcher[int, int] = MicroBatcher(answer, max_batch=8, max_wait_s=0.0, name="model-thread")
    warmed = batcher.run_alone(warm)
    later = batcher.submit(1)
    release.set()
    assert warmed.result(timeout=10) == "warm" and later.result(timeout=10) == 1
    assert seen == [("warm", "model-thread"), ("item", "model-thread")]


def test_a_chore_after_queued_items_runs_after_them_and_its_error_stays_its_own() -> None:
    gate = threading.Event()

    def answer(items: Sequence[int]) -> list[int]:
        gate.wait(10)
        return [i * 10 for i in items]

    def broken() -> None:
        raise RuntimeError("model missing")

    batcher: MicroBatcher[int, int] = MicroBatcher(answer, max_batch=8, max_wait_s=0.5)
    first = batcher.submit(1)
    chore = batcher.run_alone(broken)
    second = batcher.submit(2)
    gate.set()
    assert first.result(timeout=10) == 10
    with pytest.raises(RuntimeError, match="model missing"):
        chore.result(timeout=10)
    assert second.result(timeout=10) == 20  # the loop goes on


def readyz(
    monkeypatch: pytest.MonkeyPatch, ready: dict[str, list[str]] | Exception, milvus_ok: bool = True
) -> Any:
    """GET /readyz with the dependency checks and the registry stubbed (nothing is reached)."""
    checks = {"redis": {"ok": True}, "broker": {"ok": True}, "milvus": {"ok": milvus_ok}}

    def read(self: ReadyWorkers, queues: Sequence[str]) -> dict[str, list[str]]:
        if isinstance(ready, Exception):
            raise ready
        return {queue: ready.get(queue, []) for queue in queues}

    monkeypatch.setattr(Services, "health", lambda self: {k: dict(v) for k, v in checks.items()})
    monkeypatch.setattr(ReadyWorkers, "ready", read)
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0")).test_client().get("/readyz")


def test_readyz_is_200_when_every_queue_has_a_ready_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    response = readyz(monkeypatch, {queue: [f"{queue}@box:1"] for queue in QUEUES})
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "ready" and body["missing"] == []
    assert body["checks"]["workers"] == {"ok": True, "queues": dict.fromkeys(QUEUES, 1)}


def test_readyz_is_503_naming_the_queue_without_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    ready = {queue: ["w@box:1"] for queue in QUEUES if queue != "ingest"}
    response = readyz(monkeypatch, ready, milvus_ok=False)
    body = response.get_json()
    assert response.status_code == 503 and body["status"] == "not ready"
    assert body["missing"] == ["milvus", "ingest"]
    assert body["detail"] == "milvus not answering; no ready worker for ingest"
    assert body["checks"]["workers"]["queues"]["ingest"] == 0


def test_readyz_with_the_registry_unreadable_knows_no_worker_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    response = readyz(monkeypatch, ServiceUnavailable("Redis unreachable: refused"))
    body = response.get_json()
    assert response.status_code == 503 and body["missing"] == list(QUEUES)
    assert body["checks"]["workers"] == {"ok": False, "error": "Redis unreachable: refused"}
