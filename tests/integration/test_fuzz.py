"""Schemathesis fuzzes the live service against its own /openapi.json: no request gets a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.conftest import Stack

EXAMPLES_PER_OPERATION = 20


def _operations(stack: Stack) -> list[Any]:
    schema = schemathesis.openapi.from_url(stack.url + "/openapi.json", headers=dict(stack.headers))
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_is_fuzzed_without_a_5xx(stack: Stack) -> None:
    operations = _operations(stack)
    assert len(operations) == 13
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
            response = case.call(base_url=stack.url, headers=stack.headers, timeout=60)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
            if response.status_code >= 400:  # schemathesis lower-cases header names, values are lists
                assert response.headers.get("content-type") == ["application/problem+json"], where

        fuzz()


@pytest.mark.parametrize("path", ["/openapi.json"])
def test_the_document_needs_no_key(stack: Stack, path: str) -> None:
    import requests

    assert requests.get(stack.url + path, timeout=30).json()["openapi"].startswith("3.1")
