"""The chaos run's stack: the whole service on a private redis-server and milvus-lite, loopback only.

Started with `devstack.processes` (the code `make run` and the tests use) the way the fault tests'
`tests/integration/faultstack.py` starts theirs, with their shrunk reliability settings, plus a second
ingest worker process so document locks are contended between processes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis
import requests

from devstack.private import FAULT_SETTINGS, private_env
from devstack.processes import (
    Supervisor,
    api_argv,
    celery_argv,
    start_milvus,
    start_redis,
    wait_until,
    webhook_worker,
)

MILVUS_COLLECTION = "quarry_chaos"
SETTINGS = {
    **FAULT_SETTINGS,  # each fault resolves in seconds
    # the chaos run's own
    "INGEST_BATCH_DOCUMENTS": "2",  # jobs of several batches, spread over both workers
    "TEST_BATCH_DELAY_S": "0.5",  # a window between embedding and writing, documents locked
    "MILVUS_WRITE_BATCH": "3",  # documents of several chunks take several upserts
    # a message lost in a kill (workers.reconciler) is sent again within seconds, not minutes
    "SWEEP_INTERVAL_S": "2",
    "REQUEUE_AFTER_S": "10",
}
# Write-path points (common.faultpoints) where the injector makes one process pause, then kills it there or
# restarts a server under it; disarmed (a `.claim` file) until the injector arms one.
PAUSE_POINTS = [
    "split",
    "before_enqueue",
    "before_batch",
    "before_upsert",
    "between_upserts",
    "before_prune",
    "before_ledger",
    "ask",
]
# Every process the fault injector may kill, and how it is started again.
WORKERS = {
    "parse-worker": celery_argv("parse", 1, name="parse"),
    "ingest-worker-1": celery_argv("ingest", 1, name="ingest1"),
    "ingest-worker-2": celery_argv("ingest", 1, name="ingest2"),
    "ask-worker": celery_argv("ask", 4, threads=True, name="ask"),
}


@dataclass
class ChaosStack:
    sup: Supervisor
    tmp: Path
    url: str
    redis_url: str
    milvus_uri: str

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    @property
    def points(self) -> Path:
        return self.tmp / "data" / "faultpoints"

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        """The latest process started under `name`."""
        return [proc for proc_name, proc in self.sup.procs if proc_name == name][-1]

    def start(self, name: str) -> None:
        """Start a worker (again) under its name."""
        self.sup.start(name, WORKERS[name])

    def exited(self) -> list[tuple[str, int]]:
        """Processes (latest of each name) that have exited, with their exit codes."""
        latest = {name: proc for name, proc in self.sup.procs}
        return [(name, code) for name, proc in latest.items() if (code := proc.poll()) is not None]

    def revive(self, name: str) -> None:
        """Start an exited process again, as a restart policy (compose's `unless-stopped`) would."""
        if name == "redis":
            self.restart_redis()
        elif name == "milvus":
            self.restart_milvus()
        elif name in WORKERS:
            self.start(name)
        else:
            self.sup.start(name, self.proc(name).args)  # type: ignore[arg-type]

    def restart_milvus(self) -> None:
        start_milvus(self.sup, self.milvus_uri, self.tmp / "milvus")

    def restart_redis(self) -> None:
        start_redis(self.sup, self.redis_url, self.tmp / "redis")

    def beat_pids(self, job_id: str) -> list[int]:
        """Pids in the heartbeats of the job's running batches (`beat:<task id>` fields of its record)."""
        client = redis.Redis.from_url(
            self.redis_url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
        )
        try:
            raw = cast(dict[str, str], client.hgetall(f"quarry:job:{job_id}"))
        finally:
            client.close()
        beats = [json.loads(v) for k, v in raw.items() if k.startswith("beat:") and k != f"beat:{job_id}"]
        return [int(beat["pid"]) for beat in beats if "pid" in beat]

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False


@contextmanager
def chaos_stack(tmp: Path) -> Iterator[ChaosStack]:
    """Redis, Milvus, two ingest workers, an ask worker, the webhook worker and the API; stopped on exit."""
    pausing = {"TEST_PAUSE_AT": json.dumps(PAUSE_POINTS), "TEST_PAUSE_S": "10"}
    env = private_env(tmp, MILVUS_COLLECTION, {**SETTINGS, **pausing})
    api_port = int(env["API_PORT"])
    points = tmp / "data" / "faultpoints"
    points.mkdir(parents=True, exist_ok=True)
    for point in PAUSE_POINTS:
        (points / f"{point}.claim").touch()
    env.pop("API_KEYS", None)  # open mode: the run's clients send no key
    sup = Supervisor(env=env, log_dir=tmp / "logs")
    try:
        stack = ChaosStack(sup, tmp, f"http://127.0.0.1:{api_port}", env["REDIS_URL"], env["MILVUS_URI"])
        stack.restart_redis()
        stack.restart_milvus()
        for name in WORKERS:
            stack.start(name)
        sup.start(*webhook_worker(2))
        api = sup.start("api", api_argv("127.0.0.1", api_port))
        wait_until(stack.healthy, 60, "API", api)
        yield stack
    finally:
        sup.stop()
