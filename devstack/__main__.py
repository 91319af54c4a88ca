"""`python -m devstack`: run the whole service in the foreground until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from common.settings import get_settings
from devstack.processes import (
    Supervisor,
    api_argv,
    celery_argv,
    port_open,
    query_workers,
    start_milvus,
    start_redis,
    webhook_worker,
)
from devstack.restarts import Restarter


def main() -> int:
    settings = get_settings()
    data = settings.data_dir.resolve()
    sup = Supervisor(env={**os.environ, "DATA_DIR": str(data)})
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        start_redis(sup, settings.redis_url, data / "redis")
        start_milvus(sup, settings.milvus_uri, data / "milvus")
        workers = [
            ("ingest-worker", celery_argv("ingest", settings.ingest_concurrency)),
            *query_workers(settings),
            webhook_worker(settings.webhook_concurrency),
        ]
        for name, argv in workers:
            sup.start(name, argv)
        if port_open(settings.api_host, settings.api_port):
            raise RuntimeError(f"port {settings.api_port} is taken; set API_PORT")
        sup.start("api", api_argv(settings.api_host, settings.api_port))
        print(
            f"quarry: API on http://{settings.api_host}:{settings.api_port} (Ctrl-C stops everything)",
            flush=True,
        )
        # A worker that exits is restarted (with a backoff); Redis, Milvus or the API exiting stops everything
        # (devstack/restarts.py says why).
        restarter = Restarter(sup, restartable={name for name, _argv in workers})
        exited = None
        while not stopping and exited is None:
            time.sleep(0.5)
            exited = restarter.check()
        if exited is not None:
            print(f"quarry: {exited[0]} exited with code {exited[1]}; stopping the rest", file=sys.stderr)
            return 1
        return 0
    finally:
        print("quarry: stopping", file=sys.stderr)
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
