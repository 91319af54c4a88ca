"""Warm from the start, on real workers: /readyz is 200 only once every queue has a warm worker, the first
question after it finds the models loaded, and a kind of worker that stops is named within the expiry.

The session stack shows the ready state; the rest runs on a stack of its own (it stops workers), whose
first question is really its first.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from api.routes import READY_QUEUES
from common.readiness import TTL_S
from common.settings import Settings
from devstack.processes import service_workers
from tests.integration.conftest import Stack
from tests.integration.faultstack import FaultStack, fault_stack, wait_for

DOCUMENTS = [
    {
        "id": "tides",
        "title": "Ocean tides",
        "text": "Tides are the rise and fall of sea levels caused by the Moon.",
    },
    {
        "id": "espresso",
        "title": "Espresso",
        "text": "Espresso is coffee brewed by forcing hot water through beans.",
    },
]
WARM = "warm-up done"
EMBEDDER_LOADED = "embedder bundled:"  # workers.embedder's line when a model is built


def readyz(url: str) -> requests.Response:
    return requests.get(url + "/readyz", timeout=30)  # no key: probes have none


def test_readyz_is_200_with_every_queue_ready(stack: Stack) -> None:
    response = readyz(stack.url)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready" and body["missing"] == [] and body["detail"] == ""
    assert {"redis", "broker", "milvus", "workers"} == body["checks"].keys()
    assert all(body["checks"]["workers"]["queues"][queue] >= 1 for queue in READY_QUEUES), body


def ingest_pool() -> int:
    """The session stack's ingest worker's pool (its `-c`), as `start_service` started it."""
    argv = dict(service_workers(Settings()))["ingest-worker"]
    return int(argv[argv.index("-c") + 1])


def test_an_ingest_pool_is_ready_only_once_every_child_is_warm(stack: Stack) -> None:
    """`make run` on a CPU starts two ingest processes that share the cores; while one still loads its model
    the other must not make /readyz say ready, or the first question runs beside that load."""
    children = ingest_pool()
    assert children >= 2, "the session stack runs an ingest pool of one: nothing to check"
    lines = log_lines(stack.logs, "ingest-worker")
    ready = first_index(lines, r"ready for ingest as ")
    warm_before = [line for line in lines[:ready] if WARM in line]
    assert len(warm_before) == children, "\n".join(lines[: ready + 1])


def test_the_ingest_pool_yields_to_questions_and_splits_the_cores(stack: Stack) -> None:
    """`make run`'s ingest worker is reniced (its children inherit it) and each child takes its share of the
    cores as torch threads; two children on every core ran 5x slower (oversubscribed)."""
    children = ingest_pool()
    share, nice = Settings().threads_per_process(children), Settings().ingest_nice
    split = f"torch intra-op threads set to {share} ({children} process(es) share the cores; nice {nice})"
    lines = log_lines(stack.logs, "ingest-worker")
    assert sum(split in line for line in lines) == children, "\n".join(lines[-40:])
    # Each leads its session, whose autogroup the kernel weighs against the ask worker's (workers.gate).
    groups = {pid: autogroup(pid) for pid in ingest_processes()}
    assert len(groups) >= 1 + children and all(
        g is None or g.endswith(f" nice {nice}") for g in groups.values()
    )


def ingest_processes() -> list[int]:
    """The ingest workers' processes running now (main and pool children, of any stack)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:  # gone meanwhile
            continue
        if b"workers.app" in argv and argv[argv.index(b"-Q") + 1 : argv.index(b"-Q") + 2] == [b"ingest"]:
            found.append(int(entry.name))
    return found


def autogroup(pid: int) -> str | None:
    """Its session's scheduling group and that group's nice value; None without autogroups."""
    path = Path(f"/proc/{pid}/autogroup")
    return path.read_text().strip() if path.exists() else None


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A whole stack of its own, returned once /readyz is 200 (`start_service` waits for it)."""
    with fault_stack(tmp_path_factory.mktemp("warm"), {"TEST_BATCH_DELAY_S": "0"}) as fs:
        yield fs


def log_lines(logs: Path, worker: str) -> list[str]:
    return (logs / f"{worker}.log").read_text(errors="replace").splitlines()


def first_index(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def assert_warm_before_first_task(logs: Path, worker: str, task: str) -> None:
    """The model was built once, in the warm-up, before the worker received its first task."""
    lines = log_lines(logs, worker)
    received = first_index(lines, rf"Task {re.escape(task)}\[[^\]]+\] received")
    warm = first_index(lines, WARM)
    assert warm < received, "\n".join(lines[received : warm + 1])
    loads = [i for i, line in enumerate(lines) if EMBEDDER_LOADED in line]
    assert len(loads) == 1 and loads[0] < warm, [lines[i] for i in loads]


def test_the_first_question_after_ready_finds_the_models_warm(fresh: FaultStack) -> None:
    job = fresh.run("/api/v1/documents", json={"collection": "warm", "documents": DOCUMENTS})
    assert job["state"] == "succeeded", job
    answers = [ask(fresh, question) for question in ["why does the sea rise?"] * 10]
    assert answers[0]["result"]["passages"][0]["doc_id"] == "tides"
    assert answers[0]["result"]["reranker"] == "maxsim"  # the default reranker, warmed at start
    assert_warm_before_first_task(fresh.logs, "ask-worker", "quarry.ask")
    assert_warm_before_first_task(fresh.logs, "ingest-worker", "quarry.ingest_batch")
    for n in (0, 9):  # measured, not asserted: the worker's stage timings of the first and the tenth
        print(f"question {n + 1}: {answers[n]['result']['timings']}")


def ask(fs: FaultStack, question: str) -> dict[str, Any]:
    job = fs.run("/api/v1/ask", json={"question": question, "collection": "warm", "top_k": 1})
    assert job["state"] == "succeeded", job
    return job


def test_a_stopped_kind_of_worker_is_named_within_the_expiry(fresh: FaultStack) -> None:
    assert readyz(fresh.url).status_code == 200
    fresh.stop("webhook-worker", signal.SIGKILL)  # no goodbye: its entry must lapse
    killed = time.monotonic()
    body = wait_for(
        lambda: not_ready(fresh.url), TTL_S + 10, "/readyz to miss the webhooks worker", every_s=0.5
    )
    assert body["missing"] == ["webhooks"] and "webhooks" in body["detail"], body
    assert body["checks"]["workers"]["queues"]["webhooks"] == 0
    print(f"webhooks named {time.monotonic() - killed:.1f} s after SIGKILL (expiry {TTL_S:g} s)")
    fresh.stop("parse-worker", signal.SIGTERM)  # a clean stop withdraws before the process ends
    body = readyz(fresh.url).json()
    assert body["missing"] == ["parse", "webhooks"], body


def not_ready(url: str) -> dict[str, Any] | None:
    response = readyz(url)
    return response.json() if response.status_code == 503 else None  # type: ignore[no-any-return]
