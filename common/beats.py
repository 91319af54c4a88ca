"""Heartbeats of running tasks, judged: which are past their deadline (`stale_beats`, whose tasks
`workers.handoff` hands to another worker), and when a job whose task nothing handed on reads lost
(`lost_worker`, applied by `JobStore` on every read). Workers write the beats (`common.liveness`)."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from common.job_schema import BEAT_PREFIX


def stale_beats(
    raw: dict[bytes, bytes],
    now: float,
    tasks: Collection[str] | None = None,
    up_since: float = 0.0,
    grace: int = 0,
) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """The beats (of `tasks`, when given) past their deadline by `grace` more timeouts: {task id: (stored
    value, beat)}.

    Each beat carries its own deadline, so readers (the API) need no setting to judge it. A task whose
    child process died and whose message went back to the queue has no beat until it runs again. A beat
    written before Redis came up at `up_since` gets a whole timeout (`every`) from then to be renewed.
    """
    names = None if tasks is None else {(BEAT_PREFIX + task).encode() for task in tasks}
    stale = {}
    for name, value in raw.items():
        if not name.startswith(BEAT_PREFIX.encode()) or (names is not None and name not in names):
            continue
        beat = json.loads(value)
        timeout = beat.get("timeout", 0)
        if max(beat["until"], up_since + timeout) + grace * timeout < now:
            stale[name.decode()[len(BEAT_PREFIX) :]] = (value, beat)
    return stale


def lost_worker(
    raw: dict[bytes, bytes], now: float, tasks: Collection[str] | None = None, up_since: float = 0.0
) -> str | None:
    """Why a running job is lost: one of its tasks (of `tasks`, when given) stopped beating, and its work was
    not handed to another worker in the whole timeout after (`workers.handoff` drops the stale beat of a
    task it hands on, so a job whose work moved never reads lost); else None."""
    for _value, beat in stale_beats(raw, now, tasks, up_since, grace=1).values():
        return (
            f"worker lost: no heartbeat since {beat['at']} from {beat.get('host')} "
            f"(pid {beat.get('pid')}); the worker stopped or was killed while running this job, "
            "and no other worker took its work over"
        )
    return None
