"""Private stacks for fault tests and the chaos run: their own redis-server and milvus-lite on free loopback
ports, and reliability settings shrunk so that each fault resolves in seconds, not minutes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.processes import Supervisor, free_port, start_redis

VISIBILITY_S = 20
FAULT_SETTINGS = {
    "MAX_DELIVERIES": "2",
    "JOB_HEARTBEAT_INTERVAL_S": "0.5",
    # Above the ~5 s a prefork worker takes to notice a dead child and requeue its task.
    "JOB_HEARTBEAT_TIMEOUT_S": "8",
    "BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
    "TASK_MAX_RETRIES": "2",
    "TASK_RETRY_BACKOFF_S": "1",
    "TASK_RETRY_BACKOFF_MAX_S": "2",
    "MILVUS_TIMEOUT_S": "3",
    "WORKER_REDIS_OUTAGE_S": "30",
}


def private_env(tmp: Path, collection: str, settings: dict[str, str]) -> dict[str, str]:
    """This process's environment with `settings`, a data dir under `tmp`, and free ports for Redis, Milvus
    and the API (nothing is started)."""
    return {
        **os.environ,
        **settings,
        "DATA_DIR": str(tmp / "data"),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "MILVUS_URI": f"http://127.0.0.1:{free_port()}",
        "MILVUS_COLLECTION": collection,
        "API_PORT": str(free_port()),
    }


@contextmanager
def private_redis(tmp: Path) -> Iterator[str]:
    """A redis-server of its own (appendonly, under `tmp`) for the block; its URL."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    sup = Supervisor(env={}, log_dir=tmp / "logs")
    try:
        start_redis(sup, url, tmp / "redis")
        yield url
    finally:
        sup.stop()
