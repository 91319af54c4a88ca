"""Broker messages as the Redis transport keeps them: a queue's lists, and when each message was sent.

kombu keeps a queue in Redis lists (the queue itself, one more per priority step above 0), pushes new
messages on the left and takes from the right, so a list's last item is its oldest message. Celery's
message headers carry no send time: every publish stamps one (`SENT_HEADER`, by `stamp_sent` on Celery's
`before_task_publish`, connected by `celeryconfig.make_celery` in every process that publishes), which
`sent_at` reads back for the age of a queue's oldest message (`quarry_oldest_message_age_seconds`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from kombu.transport.redis import PRIORITY_STEPS, Channel

SENT_HEADER = "quarry_sent"  # Unix time the message was published


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue in: the queue itself, and one per priority step above 0."""
    return [queue] + [f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step]


def stamp_sent(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """`before_task_publish`: the message's headers gain its send time (a resent message a new one)."""
    if headers is not None:
        headers[SENT_HEADER] = time.time()


def sent_at(raw: bytes | str | None) -> float | None:
    """When a stored message was published; None for no message, another publisher's or a bad one."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)["headers"][SENT_HEADER]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None
