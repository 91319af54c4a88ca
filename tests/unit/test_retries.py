"""The retry policy in `common.retries`: an outage is retried, a refusal is not."""

from __future__ import annotations

from itertools import islice

import pytest
from kombu.utils.functional import fxrange

from common.errors import DocumentError, InvalidRequest, ModelUnavailable, ServiceUnavailable
from common.retries import RETRIABLE_ERRORS, milvus_unavailable, redis_tries, worker_publish_retry
from common.settings import get_settings


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


@pytest.mark.parametrize("outage_s", [30.0, 60.0])
def test_a_workers_publish_waits_out_the_outage_its_redis_commands_wait_out(outage_s: float) -> None:
    """kombu sleeps these intervals between reconnects (`kombu.utils.functional.retry_over_time`)."""
    policy = worker_publish_retry(outage_s)
    start, step, cap = policy["interval_start"], policy["interval_step"], policy["interval_max"]
    intervals = (min(value, cap) for value in fxrange(start, cap + start, step, repeatlast=True))
    waited = sum(islice(intervals, policy["max_retries"]))
    assert outage_s <= waited <= outage_s + 5


def test_the_workers_app_publishes_with_that_policy() -> None:
    from workers.app import app  # noqa: PLC0415 - the workers' app, only for this test

    expected = worker_publish_retry(get_settings().worker_redis_outage_s)
    assert app.conf.task_publish_retry_policy == expected
