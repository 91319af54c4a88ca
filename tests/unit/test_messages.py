"""Messages say when they were sent: every publish stamps its headers, and a stored message reads back."""

from __future__ import annotations

import json
import time

import pytest

from celeryconfig import make_celery
from common.messages import SENT_HEADER, sent_at, stamp_sent
from common.settings import Settings


def test_every_publish_of_a_quarry_app_is_stamped() -> None:
    from celery.signals import before_task_publish  # noqa: PLC0415

    make_celery(Settings())
    headers: dict[str, object] = {"id": "t1"}
    before = time.time()
    before_task_publish.send(sender="quarry.ask", headers=headers, body=None)
    assert before <= float(headers[SENT_HEADER]) <= time.time()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (json.dumps({"headers": {SENT_HEADER: 12.5, "id": "x"}}), 12.5),
        (json.dumps({"headers": {"id": "x"}}), None),  # sent before stamps existed, or by another app
        (json.dumps({"headers": {SENT_HEADER: "soon"}}), None),
        (b"not json", None),
        (json.dumps([1, 2]), None),
        (None, None),
    ],
)
def test_sent_at_reads_only_a_stamp(raw: str | bytes | None, expected: float | None) -> None:
    assert sent_at(raw) == expected


def test_stamp_sent_ignores_a_publish_without_headers() -> None:
    stamp_sent(headers=None)
