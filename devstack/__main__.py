"""`python -m devstack`: run the whole service in the foreground until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

import requests

from common.settings import get_settings
from devstack.processes import (
    Supervisor,
    api_argv,
    port_open,
    service_workers,
    start_milvus,
    start_redis,
)
from devstack.restarts import Restarter

NOT_READY_HINT_S = 120.0  # past this, say once what /readyz still misses


def report_ready(url: str, started: float, stop: threading.Event) -> None:
    """Print once every queue has a warm worker (GET /readyz), so the first question runs at full speed."""
    hinted = False
    while not stop.wait(0.5):
        try:
            response = requests.get(url + "/readyz", timeout=10)
        except requests.RequestException:
            continue  # the API is still starting
        waited = time.monotonic() - started
        if response.status_code == 200:
            print(
                f"quarry: ready (first question will answer at full speed) after {waited:.0f} s", flush=True
            )
            return
        if waited > NOT_READY_HINT_S and not hinted:
            hinted = True
            print(f"quarry: not ready after {waited:.0f} s: {_detail(response)}", file=sys.stderr, flush=True)


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return f"/readyz answered {response.status_code}"


def main() -> int:
    started = time.monotonic()
    settings = get_settings()
    data = settings.data_dir.resolve()
    sup = Supervisor(env={**os.environ, "DATA_DIR": str(data)})
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    done = threading.Event()
    try:
        start_redis(sup, settings.redis_url, data / "redis")
        start_milvus(sup, settings.milvus_uri, data / "milvus")
        workers = service_workers(settings)
        for name, argv in workers:
            sup.start(name, argv)
        if port_open(settings.api_host, settings.api_port):
            raise RuntimeError(f"port {settings.api_port} is taken; set API_PORT")
        sup.start("api", api_argv(settings.api_host, settings.api_port))
        print(
            f"quarry: API on http://{settings.api_host}:{settings.api_port} (Ctrl-C stops everything)",
            flush=True,
        )
        url = f"http://{settings.api_host}:{settings.api_port}"
        threading.Thread(target=report_ready, args=(url, started, done), name="ready", daemon=True).start()
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
        done.set()
        print("quarry: stopping", file=sys.stderr)
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
