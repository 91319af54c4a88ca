"""GET /api/v1/jobs on the live stack: a tenant sees only its own jobs, newest first, filtered and paged."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from client.cli import main as cli_main
from common.job_list import Cursor, JobFilter, JobLister
from common.job_schema import CREATED_INDEX, OWNER_INDEX_PREFIX, JobKeys
from common.jobs import JobStore
from tests.integration.conftest import KEYS, Stack

pytestmark = pytest.mark.integration


def _listed(stack: Stack, **params: Any) -> list[dict[str, Any]]:
    """Every page, following the cursor to its end."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = stack.get("/api/v1/jobs", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Jobs of keys "a" and "b", ended, oldest first. Their documents go at the end: other modules search
    the same two collections (the only ones these keys may use) and expect only their own documents."""
    made: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for name in ("a", "b"):
        as_key = stack.as_key(name)
        docs = [{"id": f"{name}-listed", "text": f"Tenant {name} keeps notes about volcanoes."}]
        made[name].append(
            as_key.run("/api/v1/documents", json={"collection": f"{name}-docs", "documents": docs})
        )
        for i in range(3):
            question = {"question": f"volcanoes {i}?", "collection": f"{name}-docs"}
            made[name].append(as_key.run("/api/v1/ask", json=question))
    yield made
    for name in ("a", "b"):
        path = f"/api/v1/collections/{name}-docs/documents/{name}-listed"
        as_key = stack.as_key(name)
        response = as_key.delete(path)
        assert response.status_code == 202, response.text
        assert as_key.wait_job(response.json()["job_id"])["state"] == "succeeded"


def test_each_tenant_lists_only_its_own_jobs_newest_first(
    stack: Stack, tenants: dict[str, list[dict[str, Any]]]
) -> None:
    for name, jobs in tenants.items():
        listed = _listed(stack.as_key(name), limit=2)
        assert [job["job_id"] for job in listed] == [job["job_id"] for job in reversed(jobs)]
    main_ids = {job["job_id"] for job in _listed(stack)}  # a key with every collection, not every job
    assert not main_ids & {job["job_id"] for jobs in tenants.values() for job in jobs}


def test_an_item_is_the_job_without_its_result(
    stack: Stack, tenants: dict[str, list[dict[str, Any]]]
) -> None:
    as_a = stack.as_key("a")
    (item,) = as_a.get("/api/v1/jobs", params={"limit": 1}).json()["items"]
    job = as_a.get(f"/api/v1/jobs/{item['job_id']}").json()
    assert "result" in job and job["result"] is not None
    assert item == {key: value for key, value in job.items() if key != "result"}
    assert item["collection"] == "a-docs" and item["owner"] == "a"


def test_filters_by_state_kind_collection_and_time(
    stack: Stack, tenants: dict[str, list[dict[str, Any]]]
) -> None:
    as_a, jobs = stack.as_key("a"), tenants["a"]
    asks = [job["job_id"] for job in reversed(jobs) if job["kind"] == "ask"]
    assert [job["job_id"] for job in _listed(as_a, kind="ask")] == asks
    assert [job["job_id"] for job in _listed(as_a, kind="ingest")] == [jobs[0]["job_id"]]
    assert len(_listed(as_a, state="succeeded", collection="a-docs")) == len(jobs)
    assert _listed(as_a, state="running") == [] and _listed(as_a, collection="b-docs") == []
    after = jobs[1]["created_at"]
    later = [job["job_id"] for job in _listed(as_a, created_after=after)]
    assert later == [job["job_id"] for job in reversed(jobs[2:])]


def test_bad_list_requests_are_refused_with_a_problem(stack: Stack) -> None:
    for params in ({"limit": 101}, {"state": "lost"}, {"kind": "query"}, {"cursor": "not-a-cursor!"}):
        response = stack.get("/api/v1/jobs", params=params)
        assert response.status_code in (400, 422), (params, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")


def test_an_expired_job_leaves_the_list_and_its_index(
    stack: Stack, tenants: dict[str, list[dict[str, Any]]]
) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    gone = tenants["b"][1]["job_id"]
    client.delete(JobKeys(gone).record)  # what the job TTL does
    listed = {job["job_id"] for job in _listed(stack.as_key("b"))}
    assert gone not in listed and len(listed) == len(tenants["b"]) - 1
    assert client.zscore(OWNER_INDEX_PREFIX + "b", gone) is None
    assert client.zscore(CREATED_INDEX, gone) is None


def test_an_index_keeps_its_newest_jobs_up_to_its_cap_and_expires_with_them(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    jobs = JobStore(client, ttl_s=60, list_cap=3)
    owner = f"cap-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4().hex for _ in range(5)]
    for job_id in ids:
        jobs.create(job_id, "ask", 1, {"collection": "c"}, owner=owner)
        time.sleep(0.002)  # distinct creation scores
    index = OWNER_INDEX_PREFIX + owner
    assert [member.decode() for member in client.zrevrange(index, 0, -1)] == ids[:1:-1]
    assert 0 < client.ttl(index) <= 60


def test_a_sparse_filter_costs_a_bounded_scan_and_a_cursor_goes_on(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    jobs = JobStore(client, ttl_s=60)
    owner = f"scan-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4().hex for _ in range(7)]
    for i, job_id in enumerate(ids):
        jobs.create(job_id, "ingest" if i == 0 else "ask", 1, {"collection": "c"}, owner=owner)
        time.sleep(0.002)
    lister, only_ingest = JobLister(jobs, scan=3), JobFilter(kind="ingest")
    pages, cursor = [], None
    while True:
        page = lister.page(owner, only_ingest, 10, cursor)
        pages.append([record.job_id for record in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [[], [], [ids[0]]]  # 3 + 3 + 1 entries examined, the match on the last page
    since = datetime.now(UTC).timestamp() * 1000
    assert lister.page(owner, JobFilter(created_after_ms=since), 10, None).items == []
    assert Cursor.decode(Cursor(1.5, "x").encode()) == Cursor(1.5, "x")


def test_the_command_line_lists_a_keys_jobs(
    stack: Stack, tenants: dict[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["jobs", "list", "--state", "succeeded", "--kind", "ask", "--json", "--url", stack.url]
    assert cli_main([*argv, "--api-key", KEYS["a"][0]]) == 0
    listed = [item["job_id"] for item in json.loads(capsys.readouterr().out)["items"]]
    assert listed == [job["job_id"] for job in reversed(tenants["a"]) if job["kind"] == "ask"]
