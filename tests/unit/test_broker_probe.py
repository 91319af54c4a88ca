"""The API's broker probes give up quickly and a down broker is not asked again by every request."""

from __future__ import annotations

import pytest

from api.services import Services
from common.errors import ServiceUnavailable
from common.settings import Settings

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every connect is refused at once


class CountingPool:
    """Stands in for the Celery app's connection pool and counts what asks the broker."""

    def __init__(self, pool: object) -> None:
        self.pool, self.acquired = pool, 0

    def acquire(self, **kwargs: object) -> object:
        self.acquired += 1
        return self.pool.acquire(**kwargs)  # type: ignore[attr-defined]


def _services(monkeypatch: pytest.MonkeyPatch, cache_s: float) -> tuple[Services, CountingPool]:
    svc = Services(Settings(broker_url=CLOSED, queue_depth_cache_s=cache_s))
    counting = CountingPool(svc.celery.pool)
    monkeypatch.setattr(type(svc.celery), "pool", property(lambda _: counting))
    return svc, counting


def test_a_down_broker_is_remembered_for_the_depth_cache_time(monkeypatch: pytest.MonkeyPatch) -> None:
    svc, pool = _services(monkeypatch, cache_s=60)
    for _ in range(3):
        with pytest.raises(ServiceUnavailable, match="broker"):
            svc.queue_depth("ask")
    assert pool.acquired == 1


def test_without_a_cache_every_read_asks_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    svc, pool = _services(monkeypatch, cache_s=0)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            svc.queue_depth("ask")
    assert pool.acquired == 2


def test_health_reports_the_broker_down_with_its_error() -> None:
    broker = Services(Settings(broker_url=CLOSED)).health()["broker"]
    assert broker["ok"] is False and "refused" in broker["error"].lower()
