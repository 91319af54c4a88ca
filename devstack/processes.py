"""Start, watch and stop the service's processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import redis

from common.contracts import ASK_QUEUE, INGEST_QUEUE, PARSE_QUEUE, WEBHOOK_QUEUE
from common.settings import Settings
from devstack.milvus_lite import server_argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


@dataclass
class Supervisor:
    """Children in their own process groups, stopped in reverse order of start."""

    env: dict[str, str]
    log_dir: Path | None = None  # None: children write to this terminal
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = self._spawn(name, argv)
        self.procs.append((name, proc))
        return proc

    def respawn(self, old: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Start what the exited `old` ran (same name, argv, log) in its place, so `stop` keeps the order."""
        index = next(i for i, (_name, proc) in enumerate(self.procs) if proc is old)
        name = self.procs[index][0]
        proc = self._spawn(name, list(old.args))  # type: ignore[arg-type]  # always the argv list of start()
        self.procs[index] = (name, proc)
        return proc

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        return subprocess.Popen(
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"devstack: {name} did not stop in time; killing it", file=sys.stderr)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def first_exited(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode
        return None


def start_redis(sup: Supervisor, url: str, data_dir: Path) -> None:
    """Start a redis-server for `url` unless one already answers there."""
    if redis_answers(url):
        return
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(
            f"no Redis answers at {url} and redis-server is not installed (apt-get install redis-server)"
        )
    parsed = urlparse(url)
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = sup.start(
        "redis",
        [
            server,
            "--bind",
            parsed.hostname or "127.0.0.1",
            "--port",
            str(parsed.port or 6379),
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
        ],
    )
    wait_until(lambda: redis_answers(url), 20, "redis-server", proc)


def start_milvus(sup: Supervisor, uri: str, data_dir: Path) -> None:
    """Start a milvus-lite server that every process shares over `uri` (never a .db file: it locks)."""
    parsed = urlparse(uri)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 19530
    if port_open(host, port):
        return
    proc = sup.start("milvus", server_argv(data_dir, host, port))  # its registry locked: devstack.milvus_lite
    wait_until(lambda: milvus_ready(uri), 60, "milvus-lite", proc)


def milvus_ready(uri: str) -> bool:
    """Whether a Milvus answers at `uri` (a started server, or one restarted by a test)."""
    from store.connection import connect  # noqa: PLC0415 - pymilvus: only when a Milvus is started

    try:
        # A channel of its own (store.connection), closed: pymilvus would otherwise share one per URI in a
        # process, and a probe's would outlive it (recovering later with the probe's 2 s connect timeout).
        client = connect(uri, timeout_s=2)
    except Exception:  # not up yet
        return False
    try:
        client.get_server_version(timeout=2)
        return True
    except Exception:  # not ready yet
        return False
    finally:
        client.close()


def celery_argv(queue: str, concurrency: int, *, threads: bool = False, name: str | None = None) -> list[str]:
    """A worker for one queue; `threads=True` for the ask worker, whose tasks feed one micro-batcher."""
    pool = ["-P", "threads"] if threads else []
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        queue,
        *pool,
        "-c",
        str(concurrency),
        "-n",
        f"{name or queue}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def ask_workers(settings: Settings) -> list[tuple[str, list[str]]]:
    """One process per `ask_concurrency` (each holds its models), `ask_batch_size` task threads each."""
    size = settings.ask_batch_size
    return [
        (f"ask-worker-{i}", celery_argv(ASK_QUEUE, size, threads=True, name=f"ask{i}"))
        for i in range(settings.ask_concurrency)
    ]


def gpu_expected(settings: Settings, nvidia: Path = Path("/proc/driver/nvidia/gpus")) -> bool:
    """Whether the model workers will embed on a GPU (DEVICE=cuda, or auto on a host whose NVIDIA driver
    lists one), told without importing torch here; a CPU build of torch on such a host still runs on the CPU,
    with one ingest process."""
    if settings.device != "auto":
        return settings.device == "cuda"
    return nvidia.is_dir() and any(nvidia.iterdir())


def service_workers(
    settings: Settings, *, ask_threads: int | None = None, webhooks: int | None = None
) -> list[tuple[str, list[str]]]:
    """Every worker of one host with one device, as `make run` starts them (tests start the same set):
    parsing on the CPU without a model; ingest batches and questions on the device, taking turns
    (workers/gate.py); webhook deliveries apart."""
    query = ask_workers(settings)
    if ask_threads is not None:  # tests: one ask worker named as they address it
        query = [("ask-worker", celery_argv(ASK_QUEUE, ask_threads, threads=True, name="ask"))]
    return [
        ("parse-worker", celery_argv(PARSE_QUEUE, settings.parse_concurrency)),
        ("ingest-worker", celery_argv(INGEST_QUEUE, settings.ingest_processes(gpu_expected(settings)))),
        *query,
        webhook_worker(settings.webhook_concurrency if webhooks is None else webhooks),
    ]


def webhook_worker(concurrency: int) -> tuple[str, list[str]]:
    """Deliveries in a pool of their own (threads: they wait on the network), so a slow receiver holds
    one of these threads, never one a question needs. It loads no model."""
    return "webhook-worker", celery_argv(WEBHOOK_QUEUE, concurrency, threads=True, name="webhooks")


def api_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        "2",
        "--worker-class",
        "gthread",
        "--threads",
        "32",  # a long-poll (?wait=) holds a thread for up to MAX_WAIT_S: 2 x 32 concurrent polls
        "--timeout",
        "120",
        "--graceful-timeout",
        "10",
        "--keep-alive",
        "30",  # > Retry-After: a client that waits it out must not reuse a connection being closed
        "--no-control-socket",
        "--config",  # hooks: the metrics directory of the workers (PROMETHEUS_MULTIPROC_DIR)
        str(Path(__file__).resolve().parents[1] / "gunicorn.conf.py"),
        "api:create_app()",
    ]
