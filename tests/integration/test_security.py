"""Tenants on the real service: a key never reads, lists, searches, deletes or polls another key's data.

Also Idempotency-Key on POSTs, through gunicorn, Redis and the workers.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.integration.conftest import Stack


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> dict[str, Any]:
    """Tenant A and tenant B each ingest one document into their own collection."""
    a, b = stack.as_key("a"), stack.as_key("b")
    docs = {
        "a": {"id": "a-secret", "text": "Alpha's confidential plan: migrate the fleet to hydrogen engines."},
        "b": {"id": "b-secret", "text": "Bravo's private notes on sourdough starter hydration ratios."},
    }
    jobs = {}
    for name, client in (("a", a), ("b", b)):
        response = client.post(
            "/api/v1/documents", json={"collection": f"{name}-docs", "documents": [docs[name]]}
        )
        assert response.status_code == 202, response.text
        jobs[name] = response.json()["job_id"]
        assert client.wait_job(jobs[name])["state"] == "succeeded"
    return {"a": a, "b": b, "jobs": jobs}


def _problem(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer qk_not-a-key"}, {"Authorization": "Basic x"}]
)
def test_requests_without_a_valid_key_are_401(stack: Stack, headers: dict[str, str]) -> None:
    response = requests.get(stack.url + "/api/v1/collections", headers=headers, timeout=30)
    _problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(stack.url + "/healthz", timeout=30).status_code == 200  # probes need no key


def test_a_tenant_cannot_poll_or_touch_another_tenants_jobs(tenants: dict[str, Any]) -> None:
    a, b, job_b = tenants["a"], tenants["b"], tenants["jobs"]["b"]
    assert b.get(f"/api/v1/jobs/{job_b}").json()["owner"] == "b"
    for method, path in [
        ("GET", f"/api/v1/jobs/{job_b}"),
        ("GET", f"/api/v1/jobs/{job_b}?wait=1"),
        ("GET", f"/api/v1/jobs/{job_b}/documents"),
        ("POST", f"/api/v1/jobs/{job_b}/retry"),
        ("DELETE", f"/api/v1/jobs/{job_b}"),
    ]:
        _problem(a.request(method, path), 404)


def test_a_tenant_cannot_list_read_or_delete_another_tenants_collection(tenants: dict[str, Any]) -> None:
    a, b = tenants["a"], tenants["b"]
    assert [item["name"] for item in a.get("/api/v1/collections").json()["items"]] == ["a-docs"]
    for method, path in [
        ("GET", "/api/v1/collections/b-docs"),
        ("GET", "/api/v1/collections/b-docs/documents"),
        ("GET", "/api/v1/collections/b-docs/documents/b-secret"),
        ("DELETE", "/api/v1/collections/b-docs/documents/b-secret"),
        ("DELETE", "/api/v1/collections/b-docs"),
    ]:
        _problem(a.request(method, path), 404)
    assert b.get("/api/v1/collections/b-docs/documents/b-secret").status_code == 200  # still there


def test_a_tenant_cannot_search_or_write_another_tenants_collection(tenants: dict[str, Any]) -> None:
    a = tenants["a"]
    _problem(a.post("/api/v1/ask", json={"question": "sourdough hydration", "collection": "b-docs"}), 403)
    _problem(a.post("/api/v1/ask", json={"question": "sourdough hydration"}), 403)  # default collection
    doc = {"collection": "b-docs", "documents": [{"id": "b-secret", "text": "overwritten"}]}
    _problem(a.post("/api/v1/documents", json=doc), 403)
    response = a.post("/api/v1/ask", json={"question": "sourdough hydration", "collection": "a-docs"})
    answer = a.wait_job(response.json()["job_id"])
    assert {p["doc_id"] for p in answer["result"]["passages"]} == {"a-secret"}


def test_idempotency_key_returns_the_original_job(stack: Stack) -> None:
    body = {
        "collection": "idem",
        "documents": [{"id": "i1", "text": "Idempotent submissions create one job."}],
    }
    headers = {"Idempotency-Key": "retry-me-1"}
    first = stack.post("/api/v1/documents", json=body, headers=headers)
    again = stack.post("/api/v1/documents", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    _problem(stack.post("/api/v1/documents", json={**body, "collection": "other"}, headers=headers), 422)
    assert stack.wait_job(first.json()["job_id"])["state"] == "succeeded"


def test_idempotency_keys_belong_to_their_tenant(stack: Stack, tenants: dict[str, Any]) -> None:
    """One key from two tenants makes two submissions: with global keys, the same request would replay the
    other tenant's job (and leak its id), and another request would be a 422."""
    a = tenants["a"]
    same, other = f"same-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"
    body = {"question": "hydrogen engines", "collection": "a-docs"}  # the "*" key may use a-docs too
    responses = [
        stack.post("/api/v1/ask", json=body, headers={"Idempotency-Key": same}),
        a.post("/api/v1/ask", json=body, headers={"Idempotency-Key": same}),
        stack.post("/api/v1/ask", json=body, headers={"Idempotency-Key": other}),
        a.post("/api/v1/ask", json={**body, "question": "fleet"}, headers={"Idempotency-Key": other}),
    ]
    for response in responses:
        assert response.status_code == 202, response.text
        assert "Idempotent-Replayed" not in response.headers
    assert len({response.json()["job_id"] for response in responses}) == 4
    assert a.get(f"/api/v1/jobs/{responses[0].json()['job_id']}").status_code == 404  # not a's job
    again = a.post("/api/v1/ask", json=body, headers={"Idempotency-Key": same})  # a's own retry replays
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["job_id"] == responses[1].json()["job_id"]


def test_idempotency_key_on_uploads_ignores_the_multipart_boundary(stack: Stack) -> None:
    files = [("files", ("note.txt", b"Uploads retried with the same key make one job.", "text/plain"))]
    headers = {"Idempotency-Key": "upload-1"}
    first = stack.post("/api/v1/documents", files=files, data={"collection": "idem"}, headers=headers)
    again = stack.post("/api/v1/documents", files=files, data={"collection": "idem"}, headers=headers)
    assert first.status_code == 202, first.text
    assert again.json()["job_id"] == first.json()["job_id"]
    _problem(stack.post("/api/v1/documents", files=files, data={"collection": "x"}, headers=headers), 422)
    _problem(stack.post("/api/v1/ask", json={"question": "q"}, headers={"Idempotency-Key": "bad key"}), 422)
