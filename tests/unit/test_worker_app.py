"""The worker app's import-time promises: no connection, and no document text in the success log line."""

from __future__ import annotations

import os
import subprocess
import sys

from celery.app import trace

from workers.app import app


def test_results_are_not_logged_and_tasks_are_registered() -> None:
    assert "return_value" not in trace.LOG_SUCCESS
    app.loader.import_default_modules()
    assert {"quarry.ingest", "quarry.ingest_batch", "quarry.ask", "quarry.delete"} <= set(app.tasks)


def test_an_ingest_worker_shares_its_cores_and_yields_them_from_its_own_start() -> None:
    """What a worker does before `worker_init`: import its `include`; the handlers that renice an ingest
    worker and split its cores must be connected by then (they were not, once: no ingest worker was
    reniced and both children took every core). A fresh interpreter, as a worker starts."""
    code = """
import os, types
from celery.signals import worker_init
from workers.app import app
app.loader.init_worker()  # as celery.worker.WorkController does, before it sends worker_init
ns = types.SimpleNamespace
class Worker:  # what the handlers read of a WorkController (signal senders must be hashable)
    app = ns(amqp=ns(queues=ns(consume_from={"ingest": 0})))
    concurrency = 2
sender = Worker()
before = os.nice(0)
worker_init.send(sender=sender)
from workers import gate  # only now: what the handler decided, if it was connected in time
print(gate.core_sharers(), os.nice(0) - before)
print(open("/proc/self/autogroup").read() if os.path.exists("/proc/self/autogroup") else "no autogroups")
"""
    env = {**os.environ, "INGEST_NICE": "10"}
    done = subprocess.run(  # in a session of its own, as `make run` starts each worker
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["2", "10"], done.stdout
    # Where the kernel shares the CPU between sessions first, the session is reniced too (workers.gate).
    assert lines[1] == "no autogroups" or lines[1].endswith(" nice 10"), done.stdout
