"""gunicorn's hooks for the API (read from the working directory, e.g. the image's; devstack names it).

Metrics: gunicorn's worker processes each count their own requests, and prometheus_client adds them up
from files in PROMETHEUS_MULTIPROC_DIR. The master empties that directory before any worker starts (a
counter that survived a restart would be counted again) and exports its path, which the workers inherit
before they import prometheus_client. Nothing here imports the app: the master must not load the
metrics library before the variable is set.
"""

from __future__ import annotations

import os
from typing import Any

from common.settings import get_settings


def on_starting(server: Any) -> None:
    settings = get_settings()
    path = (settings.prometheus_multiproc_dir or settings.data_dir / "prometheus").resolve()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # only prometheus_client's files, whatever else the directory holds
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges must not be summed (its counters still count)."""
    from prometheus_client import multiprocess  # noqa: PLC0415 - after on_starting set PROMETHEUS_MULTIPROC_DIR

    multiprocess.mark_process_dead(worker.pid)
