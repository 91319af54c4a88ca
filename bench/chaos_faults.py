"""The chaos run's fault injector: SIGKILLs worker processes and restarts Milvus and Redis at random.

Only processes this run started are touched: the stack's own children (by the Supervisor's handles) and
the pool children of its ingest workers (a heartbeat's pid is checked to be one of theirs before a kill).
Every main process killed is started again with the same argv (Redis and Milvus on the same port and data
directory), so the stack is whole again when the injector stops.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path

from bench.chaos_stack import PAUSE_POINTS, WORKERS, ChaosStack

INGEST_WORKERS = sorted(name for name in WORKERS if name.startswith("ingest"))
KINDS = {  # copies in the bag: its weight
    "kill_ingest_child": 2,
    "kill_ingest_worker": 1,
    "kill_ask_worker": 1,
    "restart_milvus": 1,
    "restart_redis": 1,
    "kill_at_point": 3,  # SIGKILL a process paused at a write-path point (common.faultpoints)
    "outage_at_point": 1,  # restart Milvus or Redis under a process paused there, then let it go on
}


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Injector:
    """One fault at a time, every `every` seconds (uniform), until `stop` is set. Kinds are drawn from a
    shuffled bag (weights = copies in it), so even a short run sees every kind."""

    def __init__(
        self,
        fs: ChaosStack,
        seed: int,
        every: tuple[float, float],
        open_jobs: Callable[[], list[str]],
        *,
        kinds: Mapping[str, int] = KINDS,
        down_s: tuple[float, float] = (0.2, 2.0),
    ) -> None:
        self.fs = fs
        self.rng = random.Random(seed)
        self.every = every
        self.kinds = kinds  # fault kind -> copies in the bag
        self.down_s = down_s  # how long a killed process stays down before its restart
        self.open_jobs = open_jobs  # the load's open jobs, whose beats name the children running them
        self.bag: list[str] = []
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[float, str, str]] = []
        self.crashes: list[tuple[float, str, int]] = []  # processes that exited without being killed
        self.stop = threading.Event()

    def run(self) -> None:
        due = time.monotonic() + self.rng.uniform(*self.every)
        while not self.stop.wait(0.5):
            self.revive_crashed()
            if time.monotonic() < due:
                continue
            due = time.monotonic() + self.rng.uniform(*self.every)
            if not self.bag:
                self.bag = [kind for kind, copies in self.kinds.items() for _ in range(copies)]
                self.rng.shuffle(self.bag)
            kind = self.bag.pop()
            detail = getattr(self, kind)()
            if detail:
                self.counts[kind] += 1
                self.log.append((time.time(), kind, detail))

    def revive_crashed(self) -> None:
        """A process that exited by itself is a finding; start it again, as a restart policy would."""
        for name, code in self.fs.exited():
            self.crashes.append((time.time(), name, code))
            self.fs.revive(name)

    def _pause(self) -> None:
        time.sleep(self.rng.uniform(*self.down_s))

    def _kill_group(self, name: str) -> int:
        proc = self.fs.proc(name)
        with suppress(ProcessLookupError):  # it crashed by itself a moment ago (revived on the next round)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        return proc.pid

    def kill_ingest_child(self) -> str | None:
        """A pool child, preferably one a heartbeat says is running a batch right now."""
        mains = {self.fs.proc(name).pid for name in INGEST_WORKERS}
        pids = []
        for job_id in self.open_jobs():
            try:
                pids += self.fs.beat_pids(job_id)
            except Exception:  # Redis may be down (the injector restarts it): pick any child instead
                break
        ours = [pid for pid in pids if any(pid in children(main) for main in mains)]
        source = "busy (heartbeat)"
        if not ours:
            ours, source = [pid for main in mains for pid in children(main)], "idle"
        if not ours:
            return None
        pid = self.rng.choice(sorted(set(ours)))
        os.kill(pid, signal.SIGKILL)
        return f"pid {pid} ({source})"

    def _paused(self, point: str) -> int | None:
        """Arm `point`, and return the pid of the process of ours that pauses there (None: none came)."""
        for suffix in (".json", ".go", ".tmp", ".claim"):
            (self.fs.points / f"{point}{suffix}").unlink(missing_ok=True)
        marker, deadline = self.fs.points / f"{point}.json", time.monotonic() + 6
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not marker.exists():
            (self.fs.points / f"{point}.go").touch()  # disarmed: a late arrival passes at once
            return None
        pid = int(json.loads(marker.read_text())["pid"])
        mains = {self.fs.proc(name).pid: name for name in WORKERS}
        if pid in mains or any(pid in children(main) for main in mains):
            return pid
        (self.fs.points / f"{point}.go").touch()
        return None

    def kill_at_point(self) -> str | None:
        point = self.rng.choice(PAUSE_POINTS)
        pid = self._paused(point)
        if pid is None:
            return None
        mains = {self.fs.proc(name).pid: name for name in WORKERS}
        if pid in mains:  # the threads pool answers in the main process: the whole worker goes
            self._kill_group(mains[pid])
            self._pause()
            self.fs.start(mains[pid])
            return f"{mains[pid]} pid {pid} at {point}"
        os.kill(pid, signal.SIGKILL)
        return f"pool child pid {pid} at {point}"

    def outage_at_point(self) -> str | None:
        point = self.rng.choice(PAUSE_POINTS)
        pid = self._paused(point)
        if pid is None:
            return None
        detail = self.restart_milvus() if self.rng.random() < 0.5 else self.restart_redis()
        (self.fs.points / f"{point}.go").touch()
        return f"{detail} while pid {pid} paused at {point}"

    def kill_ingest_worker(self) -> str:
        name = self.rng.choice(INGEST_WORKERS)
        pid = self._kill_group(name)
        self._pause()
        self.fs.start(name)
        return f"{name} pid {pid}"

    def kill_ask_worker(self) -> str:
        pid = self._kill_group("ask-worker")
        self._pause()
        self.fs.start("ask-worker")
        return f"ask-worker pid {pid}"

    def restart_milvus(self) -> str:
        pid = self._kill_group("milvus")
        self._pause()
        started = time.monotonic()
        self.fs.restart_milvus()
        return f"milvus-lite pid {pid}, back in {time.monotonic() - started:.1f} s"

    def restart_redis(self) -> str:
        pid = self._kill_group("redis")
        self._pause()
        self.fs.restart_redis()
        return f"redis-server pid {pid}"
