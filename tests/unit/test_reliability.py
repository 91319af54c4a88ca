"""Liveness rules without Redis: stale heartbeats, bounded deliveries, the heartbeat thread's bookkeeping."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from typing import Any

import pytest

import celeryconfig
from common.beats import lost_worker
from common.settings import Settings
from workers.reliability import Heartbeat, WorkerLost, check_delivery


def _beat(until: float) -> bytes:
    return json.dumps({"at": "2026-01-01T00:00:00.000Z", "until": until, "host": "h", "pid": 7}).encode()


def test_a_stale_heartbeat_means_the_worker_is_lost() -> None:
    now = 1000.0
    raw = {b"state": b'"running"', b"beat:t1": _beat(now + 5), b"beat:t2": _beat(now - 1)}
    reason = lost_worker(raw, now)
    assert reason is not None
    assert reason.startswith("worker lost: no heartbeat since 2026-01-01T00:00:00.000Z from h (pid 7)")
    assert lost_worker({b"beat:t1": _beat(now + 5)}, now) is None
    assert lost_worker({b"state": b'"running"'}, now) is None  # queued batches, nothing running


class FakeLiveness:
    def __init__(self) -> None:
        self.deliveries: dict[tuple[str, str, int], int] = {}
        self.beats: list[dict[str, list[str]]] = []
        self.ended: list[tuple[str, str]] = []

    def count_delivery(self, job_id: str, task_id: str, attempt: int) -> int:
        key = (job_id, task_id, attempt)
        self.deliveries[key] = self.deliveries.get(key, 0) + 1
        return self.deliveries[key]

    def beat(self, running: Mapping[str, Collection[str]], worker: dict[str, Any]) -> None:
        self.beats.append({job: sorted(tasks) for job, tasks in running.items()})

    def end(self, job_id: str, task_id: str) -> None:
        self.ended.append((job_id, task_id))


class FakeLocks:
    refreshed = 0

    def refresh(self) -> None:
        self.refreshed += 1


def test_deliveries_of_one_attempt_are_bounded_and_a_retry_starts_afresh() -> None:
    liveness = FakeLiveness()
    for _ in range(2):
        check_delivery(liveness, "job", "task", 0, limit=2)  # type: ignore[arg-type]
    with pytest.raises(WorkerLost, match=r"worker lost 2 times .* given up after 2 deliveries"):
        check_delivery(liveness, "job", "task", 0, limit=2)  # type: ignore[arg-type]
    check_delivery(liveness, "job", "task", 1, limit=2)  # type: ignore[arg-type]


def test_heartbeat_beats_for_running_tasks_only() -> None:
    liveness, locks = FakeLiveness(), FakeLocks()
    heartbeat = Heartbeat(liveness, locks, interval_s=0.05)  # type: ignore[arg-type]
    heartbeat.begin("job", "a")
    heartbeat.begin("job", "b")
    time.sleep(0.2)
    heartbeat.end("job", "a")
    heartbeat.end("job", "b")
    beats_at_end = len(liveness.beats)
    time.sleep(0.15)
    assert liveness.beats[:2] == [{"job": ["a"]}, {"job": ["b"]}]  # each task's first beat, at once
    assert {"job": ["a", "b"]} in liveness.beats
    assert len(liveness.beats) == beats_at_end  # nothing beats for ended tasks
    assert liveness.ended == [("job", "a"), ("job", "b")]
    assert locks.refreshed >= 3


def test_reliability_settings_reach_celery() -> None:
    config = celeryconfig.from_settings(Settings(broker_visibility_timeout_s=30))
    assert config["task_reject_on_worker_lost"] is True and config["task_acks_late"] is True
    assert config["broker_transport_options"]["visibility_timeout"] == 30
    default = Settings(task_time_limit_s=600, task_soft_time_limit_s=500)
    assert default.visibility_timeout_s == 1200
    with pytest.raises(ValueError, match="at least twice"):
        Settings(job_heartbeat_interval_s=10, job_heartbeat_timeout_s=15)
