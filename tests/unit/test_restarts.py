"""`python -m devstack` restarts a worker that exits, with a bounded backoff; Redis/Milvus/API exits stop it.

Real child processes (a short Python that exits, one that sleeps) under a real Supervisor; only the clock of
the backoff is the test's, so each delay is checked exactly without waiting for it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import Supervisor
from devstack.restarts import Backoff, Restarter

EXITS = [sys.executable, "-c", "import sys; sys.exit(3)"]
SLEEPS = [sys.executable, "-c", "import time; time.sleep(60)"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    supervisor = Supervisor(env={}, log_dir=tmp_path)
    yield supervisor
    supervisor.stop(timeout_s=5)


def exited(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    proc.wait(10)
    return proc


def test_the_backoff_doubles_up_to_its_bound() -> None:
    assert [Backoff(first_s=1, max_s=30).delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_worker_that_exits_is_restarted_after_a_growing_bounded_delay(
    sup: Supervisor, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    api = sup.start("api", SLEEPS)
    restarter = Restarter(sup, {"ask-worker"}, Backoff(first_s=1, max_s=4, stable_s=60), clock)
    proc = sup.start("ask-worker", EXITS)
    for delay in [1, 2, 4, 4]:  # a crash loop: each restart waits longer, never more than max_s
        assert restarter.check() is None
        exited(proc)
        assert restarter.check() is None  # scheduled, not restarted yet
        clock.now += delay - 0.1
        assert restarter.check() is None and sup.procs[1][1] is proc
        clock.now += 0.1
        assert restarter.check() is None
        new = sup.procs[1][1]
        assert new is not proc and sup.procs[1][0] == "ask-worker" and sup.procs[0][1] is api  # in place
        proc = new
    err = capsys.readouterr().err
    assert "ask-worker exited with code 3 after 0 s; restarting it in 4 s (restart 4 in a row)" in err
    assert err.count("quarry: ask-worker restarted (pid ") == 4
    assert (sup.log_dir / "ask-worker.log").exists()  # type: ignore[operator]  # same log, appended


def test_a_worker_that_ran_a_while_is_restarted_at_once_again(sup: Supervisor) -> None:
    clock = Clock()
    restarter = Restarter(sup, {"ingest-worker"}, Backoff(first_s=1, max_s=30, stable_s=60), clock)
    proc = sup.start("ingest-worker", EXITS)
    for _ in range(3):  # three quick crashes: the next wait would be 8 s
        restarter.check()
        exited(proc)
        restarter.check()
        clock.now += 30
        restarter.check()
        proc = sup.procs[0][1]
    restarter.check()  # seen running ...
    clock.now += 60  # ... for stable_s
    exited(proc)
    restarter.check()
    clock.now += 1
    restarter.check()
    assert sup.procs[0][1] is not proc  # restarted after first_s, not after 8 s


def test_redis_milvus_or_the_api_exiting_stops_everything(sup: Supervisor) -> None:
    restarter = Restarter(sup, {"ask-worker"}, Backoff(), Clock())
    worker = sup.start("ask-worker", SLEEPS)
    redis = exited(sup.start("redis", EXITS))
    assert restarter.check() == ("redis", 3)
    assert worker.poll() is None and sup.procs[1][1] is redis  # not restarted; main() stops the rest
