"""Batched calls whose failure falls only on the item that caused it.

A batch shares one tokenizer call, one forward pass or one Milvus request, so one bad item would fail
every item with it, often with a reason that names another item. `isolate` splits a failed batch in halves
and runs each again, down to the culprit: n items with one culprit cost about 2·log2(n) extra calls, paid
only when something fails. Retriable errors (the store or Redis unreachable) are not split: they would
fail every half alike, so they propagate and the task retries as a whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from billiard.exceptions import SoftTimeLimitExceeded

from common.errors import QuarryError
from common.retries import RETRIABLE_ERRORS

log = logging.getLogger(__name__)

NEVER_CAUGHT: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)
"""Re-raise these before any broad `except Exception`: Celery raises the soft time limit into a task
wherever it happens to be, and one caught there would become an item's failure while the task runs on
into its hard kill (and, killed, is delivered again to do it all over)."""

T = TypeVar("T")
R = TypeVar("R")


def isolate(
    items: Sequence[T],
    run: Callable[[Sequence[T]], Sequence[R]],
    *,
    passthrough: tuple[type[BaseException], ...] = RETRIABLE_ERRORS,
    what: str = "batch",
) -> list[R | Exception]:
    """`run(items)`, one result per item; where it raised, the exception of each item that fails alone."""
    if not items:
        return []
    try:
        results: list[R | Exception] = list(run(items))
    except (*passthrough, *NEVER_CAUGHT):
        raise
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        mid = len(items) // 2
        log.warning("%s of %d failed (%s); retrying as %d + %d", what, len(items), exc, mid, len(items) - mid)
        first = isolate(items[:mid], run, passthrough=passthrough, what=what)
        return first + isolate(items[mid:], run, passthrough=passthrough, what=what)
    if len(results) != len(items):
        raise RuntimeError(f"{what}: {len(results)} results for {len(items)} items")
    return results


def describe(exc: BaseException) -> str:
    """An exception as a reason a person reads: a domain error's own words, else its type and message."""
    if isinstance(exc, QuarryError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"
