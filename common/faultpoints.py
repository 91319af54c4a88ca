"""Test only: named points of the write path where a process pauses once, so a fault test acts right there.

`TEST_PAUSE_AT` lists the points (empty in production: `fault_point` returns at once). The first process to
reach a listed point writes `DATA_DIR/faultpoints/<point>.json` (its pid) and waits, up to `TEST_PAUSE_S`,
until the test creates `<point>.go`. Meanwhile the test kills that pid, or another process, or a server. Any
later process passes the point (it finds `<point>.claim`); the test deletes `<point>.*` to arm it again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common.settings import Settings


def marker(settings: Settings, point: str) -> Path:
    """Written by the process that paused at `point`; `.go` beside it lets that process go on."""
    return settings.data_dir / "faultpoints" / f"{point}.json"


def fault_point(settings: Settings, point: str) -> None:
    """Pause here once, if the tests asked for it."""
    if point not in settings.test_pause_at:
        return
    path = marker(settings, point)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path.with_suffix(".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # another process paused here already
    path.with_suffix(".tmp").write_text(json.dumps({"pid": os.getpid(), "point": point}))
    os.replace(path.with_suffix(".tmp"), path)  # the test never reads half a file
    go, deadline = path.with_suffix(".go"), time.monotonic() + settings.test_pause_s
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
