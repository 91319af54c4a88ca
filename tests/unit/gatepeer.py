"""Another process of the same device, for the tests of workers.gate and of the CUDA path.

The question side is a forked child that only locks the lock file (no torch after the fork) and appends to
an event log; every ordering claim of the tests is read from that log (one O_APPEND write per line, by
each side as it acts). Tests wait on events and pipes with a deadline, never on a sleep. The bulk side's
`WatchedGate` tells a test once give_way is inside its wait loop, so "still waiting" is a fact.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

from workers.gate import DeviceGate

DEADLINE_S = 60.0  # bounds a broken test; never what a passing test waits for
FORK = multiprocessing.get_context("fork")  # children only lock a file: no torch after the fork


def log_event(log: Path, event: str) -> None:
    """One O_APPEND write per line, so lines of both processes interleave whole, in the order written."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{event}\n".encode())
    finally:
        os.close(fd)


def events(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _hold_questions(path: Path, log: Path, orders: Connection, held: ProcessEvent) -> None:
    """The ask worker's part: hold the device for questions from each order "take" to the next "release",
    as long as orders to take it come.

    Orders come by pipe, not by an Event: a process SIGKILLed while it waits on a multiprocessing
    Event leaves the Event's condition waiting for it, and the next set() hangs."""
    gate = DeviceGate(path)
    while orders.poll(DEADLINE_S) and orders.recv() == "take":
        with gate.questions():
            log_event(log, "question-held")
            held.set()
            if orders.poll(DEADLINE_S):
                orders.recv()
            log_event(log, "question-released")  # still inside: the lock goes only after this line


class QuestionPeer:
    """A process of the same device that answers questions when told to (forked before any test thread)."""

    def __init__(self, path: Path, log: Path) -> None:
        orders, self._send = FORK.Pipe(duplex=False)
        self.held = FORK.Event()
        self.process = FORK.Process(target=_hold_questions, args=(path, log, orders, self.held), daemon=True)

    def __enter__(self) -> QuestionPeer:
        self.process.start()
        return self

    def hold(self) -> None:
        self.held.clear()  # set again once the peer holds the device this time
        self._send.send("take")
        assert self.held.wait(DEADLINE_S), "the peer never took the gate"

    def release(self) -> None:
        self._send.send("release")

    def __exit__(self, *exc: object) -> None:
        if self.process.is_alive():
            self._send.send("release")  # of a hold in progress, or read as the order not to take it again
            self._send.send("stop")
        self.process.join(DEADLINE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _report_waiting(path: Path, sender: Any) -> None:
    sender.send(DeviceGate(path).questions_waiting())


def seen_from_another_process(path: Path) -> bool:
    """What the ingest worker of this device would see now: does a question hold the gate?"""
    receiver, sender = FORK.Pipe(duplex=False)
    probe = FORK.Process(target=_report_waiting, args=(path, sender), daemon=True)
    probe.start()
    assert receiver.poll(DEADLINE_S), "the probe process never answered"
    waiting = bool(receiver.recv())
    probe.join(DEADLINE_S)
    return waiting


class WatchedGate(DeviceGate):
    """The bulk side's gate; `polling` is set once give_way found the gate held three times in a row,
    i.e. it is inside its wait loop, not merely started."""

    def __init__(
        self,
        path: Path,
        max_wait_s: float = DEADLINE_S,
        bulk_share: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(path, max_wait_s, bulk_share, clock)
        self.busy_checks = 0
        self.polling = threading.Event()

    def questions_waiting(self) -> bool:
        waiting = super().questions_waiting()
        self.busy_checks = self.busy_checks + 1 if waiting else 0
        if self.busy_checks >= 3:
            self.polling.set()
        return waiting
