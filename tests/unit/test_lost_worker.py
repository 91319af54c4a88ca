"""Which stale beats make a job read lost: never one from before a Redis restart, and, for a task about
to run, only its own (issue 14: a sibling settled a job as lost from a read right after a Redis outage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from common.beats import lost_worker, stale_beats
from common.isolation import isolate
from ingestion import parsing


def _beat(until: float, timeout: float = 8.0) -> bytes:
    return json.dumps({"at": "2026-01-01T00:00:00.000Z", "until": until, "timeout": timeout}).encode()


def test_a_beat_from_before_a_redis_restart_gets_a_whole_timeout_after_it() -> None:
    raw = {b"beat:t1": _beat(until=100.0)}
    assert stale_beats(raw, now=101.0).keys() == {"t1"}  # its work may be handed on from now
    assert lost_worker(raw, now=107.0) is None  # ... and gets a whole timeout for that before it reads lost
    assert lost_worker(raw, now=109.0)  # Redis up all along: lost
    assert not stale_beats(raw, now=110.0, up_since=105.0)  # Redis restarted at 105: wait until 113
    assert stale_beats(raw, now=114.0, up_since=105.0).keys() == {"t1"}
    assert lost_worker(raw, now=120.0, up_since=105.0) is None
    assert lost_worker(raw, now=122.0, up_since=105.0)


def test_a_task_judges_only_its_own_beat() -> None:
    raw = {b"beat:sibling": _beat(until=100.0), b"beat:me": _beat(until=200.0)}
    assert lost_worker(raw, now=150.0)
    assert lost_worker(raw, now=150.0, tasks=["me"]) is None
    assert lost_worker(raw, now=150.0, tasks=[]) is None
    assert lost_worker(raw, now=250.0, tasks=["me"])
    assert stale_beats(raw, now=150.0, tasks=["me"]) == {}


def test_isolate_never_swallows_the_soft_time_limit() -> None:
    def run(items: object) -> list[int]:
        raise SoftTimeLimitExceeded()

    try:
        isolate([1, 2, 3], run)
    except SoftTimeLimitExceeded:
        return
    raise AssertionError("the soft time limit became an item's failure")


def test_a_parser_never_swallows_the_soft_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(path: Path, name: str) -> object:
        raise SoftTimeLimitExceeded()  # raised into the task wherever it is, here inside a parser

    monkeypatch.setattr(parsing, "parse_file", slow)
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(SoftTimeLimitExceeded):
        list(parsing._file_items(tmp_path / "a.txt", "a.txt", parsing.ParseOptions()))
