"""Worker-side micro-batching: task threads hand their item to one model thread and wait for its answer.

Questions that arrive together (a Celery `threads` pool runs one task per thread) are embedded,
searched and reranked as one batch, so the model sees one padded forward pass instead of many. A batch
starts when it is full or when its first item has waited `max_wait_s`, so no item waits longer than
that for company. The model thread is the only one that touches the models, which are not thread-safe.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar, cast

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
X = TypeVar("X")

BatchFn = Callable[[Sequence[T]], Sequence[R | BaseException]]


class BatchTimeout(RuntimeError):
    """The item's batch did not finish within the caller's timeout."""


class _Chore:
    """Not an item: a function for the model thread to run alone, between batches (`run_alone`)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


class MicroBatcher(Generic[T, R]):
    """Collects items from many threads into batches of at most `max_batch` for one model thread."""

    def __init__(
        self, run: BatchFn[T, R], *, max_batch: int, max_wait_s: float, name: str = "batcher"
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._name = name
        self._queue: queue.Queue[tuple[T | _Chore, Future[Any]]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes, for logs and benchmarks

    def submit(self, item: T) -> Future[R]:
        """Queue one item; the future ends with its result or its own exception."""
        self._ensure_thread()
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    def call(self, item: T, timeout_s: float) -> R:
        """Submit and wait: what a task thread does."""
        future = self.submit(item)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise BatchTimeout(f"no answer within {timeout_s:g} s") from None

    def run_alone(self, fn: Callable[[], X]) -> Future[X]:
        """Run `fn` in the model thread, alone, after what was queued before it: how models get built and
        warmed in the thread that will use them before the first item arrives (workers.warmup)."""
        self._ensure_thread()
        future: Future[X] = Future()
        self._queue.put((_Chore(fn), future))
        return future

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            chore = batch.pop() if isinstance(batch[-1][0], _Chore) else None
            items = cast(list[tuple[T, Future[R]]], batch)  # a chore only ever ends a batch
            live = [(item, fut) for item, fut in items if fut.set_running_or_notify_cancel()]
            if live:
                self._execute(live)
            if chore is not None:
                _run_chore(cast(_Chore, chore[0]), chore[1])

    def _collect(self) -> list[tuple[T | _Chore, Future[Any]]]:
        """Block for a first item, then take more until the batch is full or the first item's wait ends;
        a chore ends the batch (it runs after the items queued before it)."""
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch and not isinstance(batch[-1][0], _Chore):
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _execute(self, batch: list[tuple[T, Future[R]]]) -> None:
        self.batch_sizes = [*self.batch_sizes[-99:], len(batch)]
        try:
            results = self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # every waiter must hear about it, and the loop must go on
            log.exception("%s: batch of %d failed", self._name, len(batch))
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


def _run_chore(chore: _Chore, future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(chore.fn())
    except Exception as exc:  # its caller hears of it; the loop goes on
        future.set_exception(exc)
