"""Restart a worker process that exits by itself, as docker-compose's `restart: unless-stopped` does.

Why workers only: a worker's exit loses nothing (the broker delivers its unacknowledged messages again and
the job records say what ended), and a new one picks the work up, so restarting is the recovery. Redis,
Milvus and the API are what the workers and clients stand on: when one of them exits, `make run` stops
everything and says which one, since their exits are setup problems a restart would only repeat (a port
taken, a data directory unreadable, a disk full, an app that does not import), and Redis and Milvus were
started here only when none was already running.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from devstack.processes import Supervisor


@dataclass(frozen=True)
class Backoff:
    """Wait `first_s` before the first restart, twice as long before each next one, at most `max_s`; a
    process that ran `stable_s` before it exited starts again from `first_s` (a crash loop stays slow, a
    rare crash is restarted at once)."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0

    def delay(self, restarts: int) -> float:
        return float(min(self.max_s, self.first_s * 2**restarts))


@dataclass
class Restarter:
    """Checked every tick by `python -m devstack`: restarts the `restartable` processes that exited."""

    sup: Supervisor
    restartable: Collection[str]
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic
    _since: dict[int, float] = field(default_factory=dict)  # pid -> first seen running
    _due: dict[int, float] = field(default_factory=dict)  # pid of an exited process -> when to restart it
    _restarts: dict[str, int] = field(default_factory=dict)  # name -> restarts in a row

    def check(self) -> tuple[str, int] | None:
        """The name and exit code of a process that exited and is not restarted (stop everything), or None."""
        now = self.clock()
        for name, proc in list(self.sup.procs):
            self._since.setdefault(proc.pid, now)
            if proc.poll() is None:
                continue
            if name not in self.restartable:
                return name, proc.returncode
            if proc.pid not in self._due:
                self._schedule(name, proc, now)
            elif now >= self._due[proc.pid]:
                self._restart(name, proc, now)
        return None

    def _schedule(self, name: str, proc: subprocess.Popen[bytes], now: float) -> None:
        ran_s = now - self._since[proc.pid]
        restarts = 0 if ran_s >= self.backoff.stable_s else self._restarts.get(name, 0)
        self._restarts[name] = restarts + 1
        delay = self.backoff.delay(restarts)
        self._due[proc.pid] = now + delay
        print(
            f"quarry: {name} exited with code {proc.returncode} after {ran_s:.0f} s; "
            f"restarting it in {delay:.0f} s (restart {restarts + 1} in a row)",
            file=sys.stderr,
            flush=True,
        )

    def _restart(self, name: str, proc: subprocess.Popen[bytes], now: float) -> None:
        del self._due[proc.pid], self._since[proc.pid]
        new = self.sup.respawn(proc)
        self._since[new.pid] = now
        print(f"quarry: {name} restarted (pid {new.pid})", file=sys.stderr, flush=True)
