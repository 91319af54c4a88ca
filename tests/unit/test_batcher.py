"""The micro-batcher: many threads in, batches out, each caller gets its own answer or its own error."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from workers.batcher import BatchTimeout, MicroBatcher


def doubled(items: Sequence[int]) -> list[int | BaseException]:
    return [ValueError(f"odd {i}") if i % 2 else i * 2 for i in items]


def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(doubled, max_batch=4, max_wait_s=0.5)
    start = threading.Barrier(8)

    def ask(i: int) -> int | str:
        start.wait()
        try:
            return batcher.call(i * 2, timeout_s=30)
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert results == [i * 4 for i in range(8)]
    assert sum(batcher.batch_sizes) == 8 and max(batcher.batch_sizes) <= 4
    assert len(batcher.batch_sizes) < 8  # callers that arrived together were served together


def test_an_item_error_fails_only_that_item() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(doubled, max_batch=8, max_wait_s=0.0)
    futures = [batcher.submit(i) for i in (2, 3, 4)]
    assert futures[0].result(timeout=30) == 4
    with pytest.raises(ValueError, match="odd 3"):
        futures[1].result(timeout=30)
    assert futures[2].result(timeout=30) == 8


def test_a_failing_batch_fails_its_callers_and_the_loop_goes_on() -> None:
    calls: list[int] = []

    def flaky(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("model crashed")
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(flaky, max_batch=8, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="model crashed"):
        batcher.call(1, timeout_s=30)
    assert batcher.call(7, timeout_s=30) == 7


def test_a_wrong_result_count_is_an_error_not_a_mixup() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: [1, 2, 3], max_batch=8, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="3 results for 1 items"):
        batcher.call(1, timeout_s=30)


def test_a_caller_stops_waiting_after_its_timeout() -> None:
    release = threading.Event()

    def stuck(items: Sequence[int]) -> list[int | BaseException]:
        release.wait(30)
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(stuck, max_batch=8, max_wait_s=0.0)
    with pytest.raises(BatchTimeout):
        batcher.call(1, timeout_s=0.05)
    release.set()
    assert batcher.call(2, timeout_s=30) == 2


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(doubled, max_batch=0, max_wait_s=0.1)
