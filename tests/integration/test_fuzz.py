"""Schemathesis fuzzes a live API against its own /openapi.json: no request gets a 5xx.

The fuzzed API is a second gunicorn process beside the session's stack: the same keys, settings and Milvus
(so reads of real collections are fuzzed too), but a Redis database no worker consumes. Thousands of
generated submissions then wait in that database's queues, are flushed at the end, and never load the
workers the other tests share.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.routes import READY_QUEUES
from devstack.processes import Supervisor, api_argv, free_port, wait_until
from tests.integration.conftest import Stack, healthy

EXAMPLES_PER_OPERATION = 200
OPERATIONS = 16
FUZZ_REDIS_DB = 11


@pytest.fixture(scope="module")
def fuzzed(stack: Stack) -> Iterator[Stack]:
    redis_url = stack.redis_url.rsplit("/", 1)[0] + f"/{FUZZ_REDIS_DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    port = free_port()
    env = {**stack.env, "REDIS_URL": redis_url, "DATA_DIR": str(stack.logs.parent / "fuzz-data")}
    sup = Supervisor(env=env, log_dir=stack.logs.parent / "fuzz-logs")
    try:
        api = sup.start("fuzz-api", api_argv("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(url), 60, "fuzzed API", api)
        yield Stack(url=url, redis_url=redis_url, logs=stack.logs.parent / "fuzz-logs", env=env)
    finally:
        sup.stop()
        client.flushdb()


def _operations(stack: Stack) -> list[Any]:
    schema = schemathesis.openapi.from_url(stack.url + "/openapi.json", headers=dict(stack.headers))
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_is_fuzzed_without_a_5xx(fuzzed: Stack) -> None:
    operations = _operations(fuzzed)
    assert len(operations) == OPERATIONS
    statuses: dict[str, list[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            where = f"{case.method} {case.operation.path}"
            response = case.call(base_url=fuzzed.url, headers=fuzzed.headers, timeout=60)
            statuses.setdefault(where, []).append(response.status_code)
            if case.operation.path == "/readyz":  # no worker serves this database: its truthful answer
                assert response.status_code == 503 and response.json()["missing"] == list(READY_QUEUES)
                return
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
            if response.status_code >= 400:  # schemathesis lower-cases header names, values are lists
                assert response.headers.get("content-type") == ["application/problem+json"], where

        fuzz()
    assert len(statuses) == OPERATIONS
    assert all(
        len(codes) >= EXAMPLES_PER_OPERATION
        for where, codes in statuses.items()
        if "healthz" not in where and "readyz" not in where
    )
    for where, codes in statuses.items():  # -s shows what was sent: calls and the statuses answered
        print(f"{where}: {len(codes)} calls, statuses {sorted(set(codes))}")


@pytest.mark.parametrize("path", ["/openapi.json"])
def test_the_document_needs_no_key(stack: Stack, path: str) -> None:
    assert requests.get(stack.url + path, timeout=30).json()["openapi"].startswith("3.1")
