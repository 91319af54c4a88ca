"""Real parts: Redis (reused or started), a milvus-lite server, two Celery workers and the API (gunicorn).

Started once per test session through `devstack`, the same code `make run` uses.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from api.auth import digest
from common.settings import Settings
from devstack.processes import (
    Supervisor,
    api_argv,
    free_port,
    redis_answers,
    service_workers,
    start_milvus,
    start_redis,
    wait_until,
)

# Keeps test queues and jobs apart from a `make run` stack on the same server; two test runs at once need
# two databases (QUARRY_TEST_REDIS_DB=14 for the second).
TEST_REDIS_DB = int(os.environ.get("QUARRY_TEST_REDIS_DB", "15"))
# The stack runs with API keys: most tests use MAIN (every collection); the tenant tests use A and B.
KEYS = {
    "main": ("qk_main-test-key", ["*"]),
    "a": ("qk_a-test-key", ["a-docs"]),
    "b": ("qk_b-test-key", ["b-docs"]),
}
API_KEYS = [{"name": name, "sha256": digest(key), "collections": cols} for name, (key, cols) in KEYS.items()]
# Webhooks (tests/integration/test_webhooks.py): signed, retried fast. The receivers listen on 127.0.0.1, the
# one address the operator's allowlist opens; any other internal address (127.0.0.2, ::1, 10.x) stays refused.
WEBHOOK_SECRET = "whsec-test-secret"
WEBHOOK_ENV = {
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
    "WEBHOOK_BACKOFF_S": "0.2",
    "WEBHOOK_BACKOFF_MAX_S": "1",
    "WEBHOOK_MAX_RETRIES": "3",
    "WEBHOOK_TIMEOUT_S": "30",  # a held delivery must outlast the question asked meanwhile (test_webhooks)
}


# Bounds shrunk so the tests that cross them stay cheap (tests/integration/test_hostile_input.py); uploads are
# kept an hour, and the sweeper looks twice a second, so a test that makes one due sees it go at once.
LIMITS_ENV = {
    "MAX_DOCUMENTS_PER_JOB": "3000",
    "EXACT_MAX_CHUNKS": "60",
    "UPLOAD_RETENTION_S": "3600",
    "SWEEP_INTERVAL_S": "0.5",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory `integration` (a `pytestmark` in a conftest marks nothing)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


@dataclass
class Stack:
    url: str
    redis_url: str
    logs: Path
    headers: dict[str, str] = field(default_factory=lambda: bearer("main"))
    env: dict[str, str] = field(default_factory=dict)  # what its processes were started with

    @property
    def uploads(self) -> Path:
        """UPLOAD_DIR of the stack (DATA_DIR/uploads beside the logs)."""
        return self.logs.parent / "data" / "uploads"

    def as_key(self, name: str) -> Stack:
        """The same stack, called with another tenant's API key."""
        return replace(self, headers=bearer(name))

    def request(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=timeout, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, timeout=60, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def run(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Submit like a client (202 + Location), then wait for the job to end."""
        response = self.post(path, **kwargs)
        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["Location"] == body["status_url"] == f"/api/v1/jobs/{body['job_id']}"
        return self.wait_job(body["job_id"])

    def wait_job(self, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
        """Long-poll until the job ends, as a client would."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.get(f"/api/v1/jobs/{job_id}", params={"wait": 10}).json()
            if body["state"] in ("succeeded", "failed", "cancelled"):
                return body  # type: ignore[no-any-return]
        raise AssertionError(f"job {job_id} did not finish in {timeout_s} s; logs in {self.logs}")


def _redis_url(sup: Supervisor, tmp: Path) -> str:
    url = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
    if not redis_answers(url):
        url = f"redis://127.0.0.1:{free_port()}/{TEST_REDIS_DB}"
        start_redis(sup, url, tmp / "redis")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("quarry")
    api_port, milvus_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(tmp / "data"),
        "MILVUS_URI": f"http://127.0.0.1:{milvus_port}",
        "MILVUS_COLLECTION": "quarry_test",
        "API_PORT": str(api_port),
        "API_KEYS": json.dumps(API_KEYS),
        "MAX_DOCUMENTS_PER_REQUEST": "1000",
        "MAX_REQUEST_BYTES": str(8 * 1024 * 1024),
        **LIMITS_ENV,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **WEBHOOK_ENV,
    }
    sup = Supervisor(env=env, log_dir=tmp / "logs")
    try:
        env["REDIS_URL"] = _redis_url(sup, tmp)
        start_milvus(sup, env["MILVUS_URI"], tmp / "milvus")
        url = start_service(sup, api_port, ask_threads=8)
        yield Stack(url=url, redis_url=env["REDIS_URL"], logs=tmp / "logs", env=env)
    finally:
        sup.stop()


def start_service(
    sup: Supervisor, api_port: int, *, ask_threads: int, ingest_processes: int | None = None
) -> str:
    """The workers and the API (Redis and Milvus already up), as `make run` starts them; returns the URL.
    `ingest_processes`: the ingest worker's pool, where a test must know which process holds a batch."""
    settings = Settings() if ingest_processes is None else Settings(ingest_concurrency=ingest_processes)
    for name, argv in service_workers(settings, ask_threads=ask_threads, webhooks=4):
        sup.start(name, argv)
    api = sup.start("api", api_argv("127.0.0.1", api_port))
    url = f"http://127.0.0.1:{api_port}"
    wait_until(lambda: healthy(url, "/readyz"), 180, "API and warm workers", api)  # models load at start
    return url


def healthy(url: str, probe: str = "/healthz") -> bool:
    """Whether `probe` answers 200: /healthz (Redis, broker, Milvus up) or /readyz (and warm workers)."""
    try:
        return requests.get(url + probe, timeout=5).status_code == 200
    except requests.RequestException:
        return False
