"""One private `make run` for the device benchmark: `python -m devstack` on free loopback ports, data in tmp.

Started exactly as `make run` starts the service (the same command, so the same processes: its own
redis-server and milvus-lite, the parse, ingest, query and webhook workers, the API), with an environment of
its own (devstack.private.private_env) and the configuration's settings. Stopped with SIGTERM, as Ctrl-C
stops `make run`: devstack then stops its children.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

from bench.device_report import stack_env
from common.job_schema import BEAT_PREFIX, JobKeys
from devstack.private import private_env

ROOT = Path(__file__).resolve().parents[1]
MILVUS_COLLECTION = "quarry_devbench"
POLL_S = 0.1  # readiness is timed: polled often
STOP_TIMEOUT_S = 60.0  # devstack gives its children 20 s, then kills them


@dataclass
class Stack:
    """A running private stack: its devstack process, API URL, Redis URL and when it was started."""

    proc: subprocess.Popen[bytes]
    url: str
    redis_url: str
    started: float  # time.monotonic() just before devstack was started
    log: Path

    def since_start(self) -> float:
        return time.monotonic() - self.started

    def _status(self, path: str) -> int | None:
        try:
            return requests.get(self.url + path, timeout=5).status_code
        except requests.RequestException:
            return None

    def wait_ready(self, timeout_s: float) -> tuple[float, str]:
        """Seconds from start until /readyz answers 200 (/healthz where there is no /readyz), and which."""
        endpoint = "/readyz"
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            status = self._status(endpoint)
            if status == 200:
                return self.since_start(), endpoint
            if status == 404 and endpoint == "/readyz":
                endpoint = "/healthz"  # a service without a readiness endpoint: the health check stands in
                continue
            if self.proc.poll() is not None:
                raise RuntimeError(f"devstack exited with code {self.proc.returncode}; see {self.log}")
            time.sleep(POLL_S)
        raise TimeoutError(f"stack not ready after {timeout_s:.0f} s; see {self.log}")

    def batch_running(self, job_ids: Sequence[str]) -> bool:
        """Whether a batch task of one of these ingest jobs runs (its heartbeat is in the job's record; the
        job's own coordinator task beats under the job id)."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, decode_responses=True)
        try:
            for job_id in job_ids:
                fields: list[str] = client.hkeys(JobKeys(job_id).record)  # type: ignore[assignment]
                if any(f.startswith(BEAT_PREFIX) and f != BEAT_PREFIX + job_id for f in fields):
                    return True
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C on `make run`; devstack stops its children in reverse order."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(
                f"devbench: devstack {self.proc.pid} did not stop; killing it (see {self.log})",
                file=sys.stderr,
            )
            self.proc.kill()
            self.proc.wait()


@contextmanager
def private_stack(tmp: Path, overrides: Mapping[str, str], seed: Path | None = None) -> Iterator[Stack]:
    """`python -m devstack` with the data of `seed` (copied, so each stack starts from the same state) under
    `tmp`, free loopback ports and `overrides`; stopped on exit."""
    if seed is not None:
        shutil.copytree(seed, tmp / "data")
    env = stack_env(private_env(tmp, MILVUS_COLLECTION, {}), overrides)
    log = tmp / "devstack.log"
    tmp.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the benchmark reaches it only through stop()
        )
    stack = Stack(proc, f"http://127.0.0.1:{env['API_PORT']}", env["REDIS_URL"], started, log)
    try:
        yield stack
    finally:
        stack.stop()
