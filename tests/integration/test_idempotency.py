"""Idempotency-Key under faults, through gunicorn, Redis and the workers: no phantom job, no stuck key.

A stack of its own (`faultstack`): one test SIGKILLs the API. Each first request pauses at the
`submit-claimed` fault point (it holds its claim, its job not yet recorded) until the test has done what
it came for (replayed it, or killed the API under it) and lets it go. The point writes a marker file when
a request reaches it: the event the tests wait for (common.faultpoints).
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from api.idempotency import IdempotencyKeys
from devstack.processes import api_argv, wait_until
from tests.integration.conftest import healthy
from tests.integration.faultstack import FaultStack, documents, fault_stack, wait_for

pytestmark = pytest.mark.integration

PENDING_S = 20  # long enough to see a dead request's claim after restarting the API, short to wait out
PAUSE_S = 60  # the longest a first request holds its claim; the tests let it go sooner
JOB_KEY = re.compile(r"^quarry:job:[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def idem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    extra = {
        "TEST_PAUSE_AT": json.dumps(["submit-claimed"]),
        "TEST_PAUSE_S": str(PAUSE_S),
        "IDEMPOTENCY_PENDING_S": str(PENDING_S),
    }
    with fault_stack(tmp_path_factory.mktemp("idem"), extra) as stack:
        yield stack


def marker(fs: FaultStack) -> Path:
    """Written by the request paused at the fault point (common.faultpoints)."""
    return fs.tmp / "data" / "faultpoints" / "submit-claimed.json"


def arm(fs: FaultStack) -> None:
    """The next request that claims a key pauses at the fault point."""
    for path in marker(fs).parent.glob("submit-claimed.*"):
        path.unlink()


def let_go(fs: FaultStack) -> None:
    """The paused request goes on: it records and queues its job."""
    marker(fs).with_suffix(".go").touch()


def claim(fs: FaultStack, key: str) -> dict[str, Any] | None:
    raw = fs.redis().get(IdempotencyKeys.name("", key))  # the stack is open: no tenant scope
    return json.loads(raw) if raw else None


def job_ids(fs: FaultStack) -> set[str]:
    return {
        name.removeprefix("quarry:job:")
        for name in fs.redis().scan_iter("quarry:job:*")
        if JOB_KEY.match(name)
    }


def post_in_background(
    pool: ThreadPoolExecutor, fs: FaultStack, body: dict[str, Any], key: str
) -> Future[Any]:
    return pool.submit(fs.post, "/api/v1/documents", json=body, headers={"Idempotency-Key": key})


def assert_in_progress(response: requests.Response) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    assert "still being processed" in response.json()["detail"]


def test_a_replay_during_a_slow_first_request_is_409_never_a_phantom_job(idem: FaultStack) -> None:
    body, key = {"collection": "slow", "documents": documents("slow", 2)}, "slow-first-1"
    arm(idem)
    with ThreadPoolExecutor(1) as pool:
        first = post_in_background(pool, idem, body, key)
        wait_for(marker(idem).exists, 30, "the first request to claim its key")
        assert claim(idem, key)["state"] == "pending"  # type: ignore[index]
        for _ in range(3):  # replays while it holds its claim: told to wait, never given an id
            assert_in_progress(idem.post("/api/v1/documents", json=body, headers={"Idempotency-Key": key}))
        assert not first.done()
        let_go(idem)
        replayed_ids = set()
        while not first.done():  # and while it records and queues: 409 still, or its own job
            replay = idem.post("/api/v1/documents", json=body, headers={"Idempotency-Key": key})
            if replay.status_code == 202:
                assert replay.headers["Idempotent-Replayed"] == "true"
                replayed_ids.add(replay.json()["job_id"])
            else:
                assert_in_progress(replay)
        done = first.result()
    assert done.status_code == 202 and "Idempotent-Replayed" not in done.headers, done.text
    job_id = done.json()["job_id"]
    assert replayed_ids <= {job_id}
    stored = claim(idem, key)
    assert stored is not None and (stored["job_id"], stored["state"]) == (job_id, "done")
    assert idem.redis().ttl(IdempotencyKeys.name("", key)) > PENDING_S  # kept for IDEMPOTENCY_TTL_S
    again = idem.post("/api/v1/documents", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["job_id"] == job_id
    assert idem.wait_job(job_id)["state"] == "succeeded"


def test_a_first_request_that_fails_frees_its_key(idem: FaultStack) -> None:
    key, before = "fails-first-1", job_ids(idem)
    bad = {"collection": "fails", "documents": [{"id": "same", "text": "one"}, {"id": "same", "text": "two"}]}
    arm(idem)
    with ThreadPoolExecutor(1) as pool:
        first = post_in_background(pool, idem, bad, key)
        wait_for(marker(idem).exists, 30, "the first request to claim its key")
        assert_in_progress(idem.post("/api/v1/documents", json=bad, headers={"Idempotency-Key": key}))
        let_go(idem)
        failed = first.result()
    assert failed.status_code == 422 and "duplicate document ids" in failed.text, failed.text
    assert claim(idem, key) is None
    again = idem.post("/api/v1/documents", json=bad, headers={"Idempotency-Key": key})
    assert again.status_code == 422 and "Idempotent-Replayed" not in again.headers  # it ran again
    good = {"collection": "fails", "documents": documents("fixed", 1)}
    fixed = idem.post("/api/v1/documents", json=good, headers={"Idempotency-Key": key})
    assert fixed.status_code == 202 and "Idempotent-Replayed" not in fixed.headers, fixed.text
    assert job_ids(idem) - before == {fixed.json()["job_id"]}
    assert idem.wait_job(fixed.json()["job_id"])["state"] == "succeeded"


def test_the_claim_of_a_request_killed_with_the_api_expires_and_a_retry_makes_one_job(
    idem: FaultStack,
) -> None:
    body, key, before = (
        {"collection": "killed", "documents": documents("killed", 2)},
        "killed-first-1",
        job_ids(idem),
    )
    arm(idem)
    with ThreadPoolExecutor(1) as pool:
        first = post_in_background(pool, idem, body, key)
        wait_for(marker(idem).exists, 30, "the first request to claim its key")
        idem.stop("api", signal.SIGKILL)  # gunicorn's master and workers, mid-request
        with pytest.raises(requests.ConnectionError):
            first.result()
    name = IdempotencyKeys.name("", key)
    assert claim(idem, key)["state"] == "pending" and 0 < idem.redis().ttl(name) <= PENDING_S  # type: ignore[index]
    restart_api(idem)
    assert claim(idem, key) is not None, "the API took longer to restart than the claim lives"
    assert_in_progress(idem.post("/api/v1/documents", json=body, headers={"Idempotency-Key": key}))

    wait_for(lambda: claim(idem, key) is None, PENDING_S + 10, "the dead request's claim to expire")
    retried = idem.post("/api/v1/documents", json=body, headers={"Idempotency-Key": key})
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers, retried.text
    job_id = retried.json()["job_id"]
    again = idem.post("/api/v1/documents", json=body, headers={"Idempotency-Key": key})
    assert again.headers["Idempotent-Replayed"] == "true" and again.json()["job_id"] == job_id
    assert job_ids(idem) - before == {job_id}  # the killed request recorded nothing; the retry one job
    assert idem.wait_job(job_id)["state"] == "succeeded"
    _, rows = idem.chunks("killed")
    assert {row["doc_id"] for row in rows} == {"killed-0", "killed-1"}
    assert len({row["pk"] for row in rows}) == len(rows)


def restart_api(fs: FaultStack) -> None:
    port = int(fs.url.rsplit(":", 1)[1])
    api = fs.sup.start("api", api_argv("127.0.0.1", port))
    wait_until(lambda: healthy(fs.url), 60, "API", api)
