"""Worker-side fault handling: heartbeats of running tasks, bounded redelivery, lost child processes.

- A child process killed in the middle of a task (SIGKILL, out of memory) makes Celery put the task's
  message back in the queue (`task_reject_on_worker_lost`); `LostChildRequest`, in the worker's main
  process, records that the task is waiting in the queue again rather than lost.
- Each delivery is counted before the task runs: past `max_deliveries` the task fails with `WorkerLost`
  instead of killing worker after worker (Celery alone would redeliver it forever).
- `Heartbeat`, one thread per process, refreshes the beats of the tasks the process runs and the
  document locks and collection writer entries it holds. When a whole worker vanishes nothing in it can
  requeue its tasks; once their beats are stale the parse workers' sweeper hands their messages to the
  next worker (`workers.handoff`), long before the broker's visibility timeout would.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from common.fences import Fences
from common.liveness import Liveness
from common.locks import DocumentLocks

log = logging.getLogger(__name__)


class WorkerLost(Exception):
    """The task's worker died `max_deliveries` times while running it; it is not delivered again."""


def check_delivery(liveness: Liveness, job_id: str, task_id: str, attempt: int, limit: int) -> None:
    """Count this delivery; refuse to run once the same attempt has been delivered more than `limit` times."""
    delivery = liveness.count_delivery(job_id, task_id, attempt)
    if delivery > limit:
        raise WorkerLost(
            f"worker lost {delivery - 1} times while running this task (its process was killed, ran "
            f"out of memory or crashed); given up after {limit} deliveries"
        )


def delivery_token(task_id: str, pid: int | None = None) -> str:
    """Names one delivery of a task: the process running it (the worker's main process names its child)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}:{task_id}"


class Heartbeat:
    """Beats for the tasks running in this process, every `interval_s`, from one daemon thread."""

    def __init__(
        self, liveness: Liveness, locks: DocumentLocks, interval_s: float, fences: Fences | None = None
    ) -> None:
        self.liveness = liveness
        self.locks = locks
        self.fences = fences
        self.interval_s = interval_s
        self.worker = {"host": socket.gethostname(), "pid": os.getpid()}
        self._running: dict[str, set[str]] = {}  # job id -> ids of its tasks running here
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def begin(self, job_id: str, task_id: str) -> None:
        with self._lock:
            self._running.setdefault(job_id, set()).add(task_id)
            self.liveness.beat({job_id: [task_id]}, self.worker)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
                self._thread.start()

    def end(self, job_id: str, task_id: str) -> None:
        """Stop beating for a task that ended; under the lock, so no late beat lands after the removal."""
        with self._lock:
            tasks = self._running.get(job_id, set())
            tasks.discard(task_id)
            if not tasks:
                self._running.pop(job_id, None)
            try:
                self.liveness.end(job_id, task_id)
            except Exception as exc:  # the task's outcome is recorded already; only its beat lingers
                log.warning("could not clear the heartbeat of task %s: %s", task_id, exc)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                with self._lock:
                    if self._running:
                        running = {job: sorted(tasks) for job, tasks in self._running.items()}
                        self.liveness.beat(running, self.worker)
                self.locks.refresh()
                if self.fences is not None:
                    self.fences.refresh()
            except Exception as exc:  # Redis away: try again next time, never die
                log.warning("heartbeat not written: %s", exc)


class LostChildRequest(Request):  # type: ignore[misc]
    """Main-process side of a task: notes when its child process died and Celery requeued its message."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # unwrap ExceptionWithTraceback
        lost = isinstance(exc, WorkerLostError) and self.task.reject_on_worker_lost and self.task.acks_late
        if lost and self.worker_pid:  # before the requeue: the next delivery need not wait for the TTL
            try:
                self.task.on_child_lost(self.id, self.kwargs, self.worker_pid)
            except Exception as error:  # what the child held expires with its heartbeat timeout
                log.warning("could not release what the lost child of task %s held: %s", self.id, error)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        if not lost:
            return
        try:
            self.task.on_requeued(self.id, self.kwargs, f"worker lost ({exc})")
        except Exception as error:  # the message is requeued either way; only the note is missing
            log.warning("could not record the requeue of task %s: %s", self.id, error)
