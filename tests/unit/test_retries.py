"""The retry policy in `common.retries`: an outage is retried, a refusal is not."""

from __future__ import annotations

import pytest

from common.errors import DocumentError, InvalidRequest, ModelUnavailable, ServiceUnavailable
from common.retries import RETRIABLE_ERRORS, milvus_unavailable, redis_tries


@pytest.mark.parametrize(
    ("message", "code", "outage"),
    [
        ("", "UNAVAILABLE", True),
        ("", "DEADLINE_EXCEEDED", True),
        ("Fail connecting to server on 127.0.0.1:19530, illegal connection params", None, True),
        ("collection not loaded: released", None, True),
        ("request timed out", None, True),
        ("VARCHAR field 'text' value length 20 exceeds max_length=10", None, False),
        ("", "INVALID_ARGUMENT", False),
        ("unavailable", "INVALID_ARGUMENT", False),  # a gRPC code, when there is one, decides
    ],
)
def test_only_a_milvus_outage_is_retried(message: str, code: str | None, outage: bool) -> None:
    assert milvus_unavailable(message, code) is outage


def test_tasks_retry_outages_and_never_bad_input() -> None:
    assert all(
        issubclass(kind, RETRIABLE_ERRORS) for kind in (ServiceUnavailable, ConnectionError, TimeoutError)
    )
    assert not any(
        issubclass(kind, RETRIABLE_ERRORS) for kind in (InvalidRequest, DocumentError, ModelUnavailable)
    )


def test_a_worker_redis_client_tries_long_enough_for_the_outage_it_waits_out() -> None:
    # 50 ms doubling reaches its 1 s cap after about four tries; each further try is a second
    assert redis_tries(10) == 14 and redis_tries(0.5) == 4
