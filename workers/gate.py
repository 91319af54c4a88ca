"""Questions first on a shared device: bulk embedding pauses between multiplies while a question is answered.

One device (a GPU, or a CPU host's cores) serves two kinds of model work from two worker processes: the
ingest worker (a prefork pool, so a killed or stuck batch is redelivered or hard-killed as Celery promises)
embeds bulk uploads, the ask worker (a threads pool feeding one micro-batcher) answers questions. Each
gets the whole device when it is alone. When both run, a question must not wait for a bulk batch.

The turn-taking is a lock file per device (`Settings.gate_path`), locked with flock(2), which the kernel
releases when its holder dies however it dies:
- an ask worker holds it *shared* while it answers a batch of questions (embed, search, rerank);
- an ingest worker, before each matrix multiply of a transformer layer (forward pre-hooks, `check_points`;
  before each forward pass for a model without layers), tries to take it *exclusive* without blocking;
  when a question holds it, the ingest worker waits until no question does (polling), and carries on.
  A question so waits at most for the multiply in progress, never for a whole batch.
Questions that keep the device (a flood of them, or a hung ask worker) would stop bulk work for good, and
its batches would fail at their time limit: measured on 2 CPU cores, eight clients asking nonstop let a
200-document ingest finish no batch in two minutes, though short gaps between their batches let a multiply
through now and then. So bulk work has a floor, `question_gate_bulk_share`: in a period that starts with a
wait, it waits at most `question_gate_max_wait_s` in all, gaps or not, then runs on without waiting until
the period ends, which makes that share of it (`DeviceGate.give_way`). Questions still go first; a flood
slows ingestion but cannot stop it.
On a CPU the ingest worker also runs at a lower priority (`ingest_nice`), so even that multiply yields the
cores (and during such a slice the kernel still gives questions most of them). The alternatives measured
against this (bench/device.py) are in docs/benchmarks.md, "Device use".
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.signals import worker_init

from common.contracts import ASK_QUEUE, INGEST_QUEUE
from common.settings import Settings, get_settings

log = logging.getLogger(__name__)

_POLL_S = (0.001, 0.002, 0.005, 0.01)  # the ingest side's polls: short first, a question ends soon
CPU_BULK_SHARE, GPU_BULK_SHARE = 0.5, 0.1  # `bulk_share` when QUESTION_GATE_BULK_SHARE is unset
AUTOGROUP = Path("/proc/self/autogroup")  # the scheduler's group of this process's session (`renice_session`)


class DeviceGate:
    """One process's handle on its device's lock file (opened lazily: after the fork, never before)."""

    def __init__(
        self,
        path: Path,
        max_wait_s: float = 10.0,
        bulk_share: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_wait_s <= 0 or not 0 <= bulk_share < 1:
            raise ValueError("max_wait_s must be > 0 and bulk_share in [0, 1)")
        self.path = path
        self.max_wait_s = max_wait_s
        self.period_s = max_wait_s / (1 - bulk_share)  # waits of at most max_wait_s, and bulk's share
        self._clock = clock
        self._fd: int | None = None
        self._pid = 0
        self._held = 0  # question batches of this process in flight (the lock is shared once for all)
        self._lock = threading.Lock()
        self._period_ends = float("-inf")  # the end of the current period of waits (`give_way`)
        self._wait_left = 0.0  # of the period's max_wait_s; used up: bulk runs through the rest of it
        self.waited_s = 0.0  # total time this process's bulk work gave way (logs and benchmarks)
        self.ran_through_s = 0.0  # total time it ran on through questions for its share (logs, benchmarks)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own description
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def questions(self) -> Iterator[None]:
        """Hold the device for questions: bulk work pauses at its next check point until the last one ends."""
        with self._lock:
            if self._held == 0:
                fcntl.flock(self._file(), fcntl.LOCK_SH)  # waits only for an ingest check in progress
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
                if self._held == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)

    def questions_waiting(self) -> bool:
        """Whether another process answers questions now (never this one: it would wait for itself)."""
        with self._lock:  # atomic with questions() in other threads: both flock one open file description
            if self._held:
                return False
            fd = self._file()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False

    def running_through(self) -> bool:
        """Whether bulk work is in a slice it runs without waiting: the rest of a period whose wait is used
        up (its share of the period)."""
        return self._wait_left <= 0 and self._clock() < self._period_ends

    def give_way(self) -> float:
        """Bulk work's check point: return at once when no question runs or bulk is in its slice, else once
        no question does or the period's wait is used up, which starts the slice. Returns seconds waited."""
        if self.running_through() or not self.questions_waiting():
            return 0.0
        start = self._clock()
        if start >= self._period_ends:  # this wait starts a period
            self._period_ends, self._wait_left = start + self.period_s, self.max_wait_s
        polls = 0
        while self._clock() - start < self._wait_left and self.questions_waiting():
            time.sleep(_POLL_S[min(polls, len(_POLL_S) - 1)])
            polls += 1
        end = self._clock()
        self._wait_left -= end - start
        self.waited_s += end - start
        if self._wait_left <= 0 and end < self._period_ends:
            self._start_slice(end)
        return end - start

    def _start_slice(self, now: float) -> None:
        self.ran_through_s += self._period_ends - now
        log.warning(
            "questions held the device for %.1f s of %.1f: bulk work runs %.1f s without waiting "
            "(QUESTION_GATE_BULK_SHARE)",
            self.max_wait_s,
            now - (self._period_ends - self.period_s),
            self._period_ends - now,
        )


class NoGate:
    """QUESTION_GATE=false: both kinds of work share the device as the OS (or the GPU) schedules them."""

    waited_s = 0.0
    ran_through_s = 0.0

    @contextmanager
    def questions(self) -> Iterator[None]:
        yield

    def questions_waiting(self) -> bool:
        return False

    def give_way(self) -> float:
        return 0.0


Gate = DeviceGate | NoGate


def gate_for(settings: Settings) -> Gate:
    if not settings.question_gate:
        return NoGate()
    return DeviceGate(settings.gate_path, settings.question_gate_max_wait_s, bulk_share(settings))


def bulk_share(settings: Settings) -> float:
    """QUESTION_GATE_BULK_SHARE, or by device. On a CPU the ingest worker runs niced, so in its share it
    gets about a tenth of the cores beside questions: measured on 2 cores under eight clients asking
    nonstop for 300 s, 0.1 finished no 64-document batch (516 questions, 514 without a share) and 0.5 took
    136 documents (441 questions; docs/benchmarks.md). On a GPU nothing else orders the two: 0.1."""
    if settings.question_gate_bulk_share is not None:
        return settings.question_gate_bulk_share
    from workers.device import choose_device  # noqa: PLC0415 - workers.device imports this module

    return CPU_BULK_SHARE if choose_device(settings).device == "cpu" else GPU_BULK_SHARE


def transformer_layers(model: Any) -> list[Any]:
    """The repeated blocks of a transformer (BERT, RoBERTa/XLM-R, DistilBERT, MPNet, ...), found as the
    longest `torch.nn.ModuleList` in the model; empty when there is none (then passes are the unit)."""
    import torch  # noqa: PLC0415 - torch: every worker main process imports this module

    lists: list[torch.nn.ModuleList] = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=lambda blocks: len(list(blocks)))) if lists else []


def check_points(model: Any) -> list[Any]:
    """Where bulk work may pause: before each matrix multiply (`torch.nn.Linear`) of each transformer layer,
    or before the layer itself where it has none. A layer of a 4,096-token batch takes ~80 ms on two CPU
    cores, its longest multiply ~18 ms: a question arriving mid-layer waits for a multiply, not the layer."""
    import torch  # noqa: PLC0415 - torch: every worker main process imports this module

    points: list[Any] = []
    for layer in transformer_layers(model):
        linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
        points.extend(linears or [layer])
    return points


def install_give_way(model: Any, gate: Gate) -> int:
    """Make every check point of `model` (check_points) one of bulk work; returns how many."""
    if isinstance(gate, NoGate):
        return 0
    points = check_points(model)

    def hook(_module: Any, _args: Any) -> None:
        """Returns None: whatever a forward pre-hook returns replaces the module's input."""
        gate.give_way()

    for point in points:
        point.register_forward_pre_hook(hook)
    return len(points)


def ingest_only(consumes: set[str]) -> bool:
    """Whether a worker does bulk work only (its queues): the one that gives way to questions."""
    return INGEST_QUEUE in consumes and ASK_QUEUE not in consumes


def renice(settings: Settings, consumes: set[str]) -> bool:
    """Lower an ingest-only worker's CPU priority once, in its main process (pool children inherit it)."""
    if not settings.ingest_nice or not ingest_only(consumes):
        return False
    os.nice(settings.ingest_nice)
    grouped = renice_session(settings.ingest_nice)
    log.info(
        "ingest worker reniced by %d%s: questions win the cores",
        settings.ingest_nice,
        ", its session's autogroup too" if grouped else "",
    )
    return True


def renice_session(nice: int, autogroup: Path = AUTOGROUP) -> bool:
    """Renice this process's autogroup when the process leads its session (`make run`, the test stacks and
    a service manager start each worker in a session of its own); a worker sharing a session, a shell's,
    leaves it alone, or it would lower its neighbours too. Where autogroups are on (Linux's
    sched_autogroup_enabled), the kernel shares the CPU between sessions first and a nice value only orders
    the processes of one session: measured on 2 cores, two spinning processes at nice 10, each in a session
    of its own, got 2.96-3.00 CPU-s of 6 s like two at nice 0 beside them; with their autogroups at nice 10,
    0.61 against 5.33-5.37. So until 2026-12-05 `INGEST_NICE` did nothing under `make run`."""
    if os.getsid(0) != os.getpid():
        return False
    try:
        autogroup.write_text(str(nice), encoding="ascii")
    except OSError:  # a kernel without autogroups, or one that refuses: the nice value alone stands
        return False
    return True


_sharers = 1  # set in an ingest worker's main process, before it forks its pool


def share_cores(consumes: set[str], processes: int) -> int:
    """How many processes of this worker share the cores: an ingest-only worker's pool children do (each
    embeds on its share while another chunks and writes), any other worker's model process has them all."""
    global _sharers  # noqa: PLW0603 - decided once per worker, before the fork, like renice
    _sharers = max(1, processes) if ingest_only(consumes) else 1
    return _sharers


def core_sharers() -> int:
    """What `share_cores` decided for this process (1 outside a worker: a bench, a test)."""
    return _sharers


def pool_size(worker: Any) -> int | None:
    """A starting worker's `-c N`; None while Celery has not resolved `auto` (it does after `worker_init`)."""
    size = worker.concurrency
    return size if isinstance(size, int) else None


@worker_init.connect  # type: ignore[untyped-decorator]
def _share_device(sender: Any, **_: Any) -> None:
    consumes = set(sender.app.amqp.queues.consume_from)
    renice(get_settings(), consumes)
    share_cores(consumes, pool_size(sender) or os.cpu_count() or 1)  # `auto`: a process per core
