"""Backpressure and rate limits against a real Redis broker (no worker consumes this database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api import create_app
from api.auth import digest
from common.contracts import ASK_TASK
from common.settings import ApiKey, Settings
from devstack.processes import free_port, redis_answers

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/13"  # its own database: nothing here is ever consumed
KEYS = [
    ApiKey(name="one", sha256=digest("qk_one"), collections=["*"]),
    ApiKey(name="two", sha256=digest("qk_two"), collections=["*"]),
]


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    if not redis_answers(REDIS_URL):
        pytest.skip("needs Redis on 127.0.0.1:6379 (.ci/run starts one)")
    redis.Redis.from_url(REDIS_URL).flushdb()
    yield Settings(
        redis_url=REDIS_URL,
        milvus_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens: /healthz is 503, predictably
        data_dir=tmp_path,
        api_keys=KEYS,
        max_ask_queue=3,
        queue_depth_cache_s=0,
        retry_after_s=7,
        rate_limit="4/minute",
    )
    redis.Redis.from_url(REDIS_URL).flushdb()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_ask_answers_429_with_retry_after_when_the_query_queue_is_full(settings: Settings) -> None:
    app = create_app(settings)
    client = app.test_client()
    for _ in range(2):
        response = client.post("/api/v1/ask", json={"question": "q"}, headers=_as("qk_one"))
        assert response.status_code == 202, response.json
    services = app.extensions["quarry"]
    services.celery.send_task(ASK_TASK, kwargs={}, task_id="x" * 32)  # a third waiting message
    assert services.queue_depth("ask") == 3
    response = client.post("/api/v1/ask", json={"question": "q"}, headers=_as("qk_one"))
    assert response.status_code == 429
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"] == "7"
    assert "3 questions are waiting" in response.json["detail"]
    bad = client.post("/api/v1/ask", json={"question": ""}, headers=_as("qk_two"))
    assert bad.status_code == 422  # a bad request is still told what is wrong with it


def test_rate_limit_is_per_key_with_retry_after(settings: Settings) -> None:
    client = create_app(settings).test_client()
    path = "/api/v1/jobs/" + "0" * 32
    statuses = [client.get(path, headers=_as("qk_one")).status_code for _ in range(5)]
    assert statuses == [404, 404, 404, 404, 429]
    limited = client.get(path, headers=_as("qk_one"))
    assert limited.mimetype == "application/problem+json"
    assert int(limited.headers["Retry-After"]) > 0
    assert client.get(path, headers=_as("qk_two")).status_code == 404  # another key, own budget
    for _ in range(6):  # past the limit: /healthz is never limited, and answers what it sees
        health = client.get("/healthz")
        assert health.status_code == 503 and "X-RateLimit-Limit" not in health.headers  # no Milvus here
        assert health.json["checks"]["redis"]["ok"] and not health.json["checks"]["milvus"]["ok"]
