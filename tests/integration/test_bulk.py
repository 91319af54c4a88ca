"""Bulk ingestion: dedup, per-document reports, partial failures, deletes, collections, filters."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.conftest import Stack

DOCS = [
    {"id": f"doc-{i}", "title": f"Topic {i}", "text": text, "metadata": {"lang": lang}}
    for i, (text, lang) in enumerate(
        [
            ("Penguins are flightless birds living in the southern hemisphere.", "en"),
            ("Der Rhein ist ein Fluss in Mitteleuropa.", "de"),
            ("Saturn has a prominent ring system made of ice and rock.", "en"),
            ("Sourdough bread rises thanks to wild yeast and lactobacilli.", "en"),
        ]
    )
]


def ask(stack: Stack, question: str, **extra: Any) -> list[dict[str, Any]]:
    job = stack.run("/api/v1/ask", json={"question": question, "collection": "bulk", **extra})
    assert job["state"] == "succeeded", job
    return job["result"]["passages"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bulk(stack: Stack) -> dict[str, Any]:
    job = stack.run("/api/v1/documents", json={"collection": "bulk", "documents": DOCS})
    assert job["state"] == "succeeded", job
    return job


def test_posting_the_same_documents_again_writes_nothing(stack: Stack, bulk: dict[str, Any]) -> None:
    again = stack.run("/api/v1/documents", json={"collection": "bulk", "documents": DOCS})
    assert again["state"] == "succeeded"
    assert again["result"]["skipped"] == len(DOCS) and again["result"]["chunks"] == 0
    report = stack.get(f"/api/v1/jobs/{again['job_id']}/documents", params={"status": "skipped"}).json()
    assert report["total"] == len(DOCS)


def test_on_duplicate_error_fails_only_the_existing_documents(stack: Stack, bulk: dict[str, Any]) -> None:
    docs = [DOCS[0], {"id": "fresh", "text": "Brand new text about lighthouses."}]
    job = stack.run(
        "/api/v1/documents", json={"collection": "bulk", "documents": docs, "on_duplicate": "error"}
    )
    assert job["state"] == "succeeded"
    assert (job["result"]["succeeded"], job["result"]["failed"]) == (1, 1)
    failed = stack.get(f"/api/v1/jobs/{job['job_id']}/documents", params={"status": "failed"}).json()
    assert [item["doc_id"] for item in failed["items"]] == ["doc-0"]
    assert "already exists" in failed["items"][0]["reason"]


def _failed(stack: Stack, job_id: str) -> dict[str, str]:
    failed = stack.get(f"/api/v1/jobs/{job_id}/documents", params={"status": "failed"}).json()
    return {item["doc_id"]: item["reason"] for item in failed["items"]}


def test_partial_failure_reports_each_document_and_retry_reruns_only_failures(stack: Stack) -> None:
    files = [
        ("files", ("good.txt", b"Volcanic glass is called obsidian.", "text/plain")),
        ("files", ("corrupt.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage", "application/pdf")),
        ("files", ("run.exe", b"MZ\x90\x00", "application/octet-stream")),
        ("files", ("also-good.md", b"# Moss\n\nMoss grows on the north side.", "text/markdown")),
    ]
    job = stack.run("/api/v1/documents", files=files, data={"collection": "partial"})
    assert job["state"] == "succeeded", job
    assert (job["result"]["succeeded"], job["result"]["failed"]) == (2, 2)
    pages = stack.get(f"/api/v1/jobs/{job['job_id']}/documents", params={"limit": 1}).json()
    assert pages["total"] == 4 and len(pages["items"]) == 1 and pages["next_offset"] == 1
    reasons = _failed(stack, job["job_id"])
    assert set(reasons) == {"corrupt.pdf", "run.exe"}
    assert "PDF" in reasons["corrupt.pdf"] and ".exe" in reasons["run.exe"]

    retry = stack.run(f"/api/v1/jobs/{job['job_id']}/retry")
    assert retry["progress"]["total"] == 2 and retry["progress"]["done"] == 2
    assert retry["state"] == "failed"  # still corrupt: nothing could be ingested this time either
    assert set(_failed(stack, retry["job_id"])) == {"corrupt.pdf", "run.exe"}
    assert stack.post(f"/api/v1/jobs/{retry['job_id']}/retry").status_code == 202


def test_cancel_stops_queued_and_running_jobs(stack: Stack) -> None:
    long = [
        {"id": f"long-{i}", "text": f"Paragraph {i} about tide pools and anemones. " * 40} for i in range(400)
    ]
    running = stack.post("/api/v1/documents", json={"collection": "cancel", "documents": long}).json()
    queued = stack.post("/api/v1/documents", json={"collection": "cancel", "documents": DOCS}).json()
    response = stack.delete(f"/api/v1/jobs/{queued['job_id']}")
    # 200 when it was still queued (ends at once), 202 if its coordinator had already started.
    assert response.status_code in (200, 202)
    for _ in range(600):  # until the first batch is written (bounded: 60 s)
        if stack.get(f"/api/v1/jobs/{running['job_id']}").json()["progress"]["done"]:
            break
        time.sleep(0.1)
    assert stack.delete(f"/api/v1/jobs/{running['job_id']}").status_code in (200, 202)
    ended = stack.wait_job(running["job_id"])
    assert ended["state"] == "cancelled"
    assert 0 < ended["progress"]["done"] < len(long)
    assert stack.wait_job(queued["job_id"])["state"] == "cancelled"
    assert stack.get(f"/api/v1/jobs/{queued['job_id']}/documents").json()["total"] == 0
    assert stack.delete(f"/api/v1/jobs/{queued['job_id']}").status_code == 409


def test_filters_restrict_the_search(stack: Stack, bulk: dict[str, Any]) -> None:
    german = ask(stack, "river", filters={"metadata.lang": "de"}, top_k=10)
    assert {p["doc_id"] for p in german} == {"doc-1"}
    some = ask(stack, "birds and rings", filters={"doc_id": ["doc-0", "doc-2"]}, top_k=10)
    assert {p["doc_id"] for p in some} == {"doc-0", "doc-2"}


def test_collection_pages(stack: Stack, bulk: dict[str, Any]) -> None:
    listing = stack.get("/api/v1/collections").json()["items"]
    assert any(item["name"] == "bulk" and item["documents"] >= len(DOCS) for item in listing)
    info = stack.get("/api/v1/collections/bulk").json()
    assert info["embedding_model"] and info["index"]["type"] == "HNSW"
    page = stack.get("/api/v1/collections/bulk/documents", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["total"] >= len(DOCS) and page["next_offset"] == 2
    doc = stack.get("/api/v1/collections/bulk/documents/doc-3").json()
    assert doc["title"] == "Topic 3" and doc["chunks"][0]["text"].startswith("Sourdough")


def test_deleting_a_document_removes_it_from_search(stack: Stack, bulk: dict[str, Any]) -> None:
    stack.run(
        "/api/v1/documents",
        json={
            "collection": "bulk",
            "documents": [{"id": "gone", "text": "Quokkas are small marsupials that seem to smile."}],
        },
    )
    assert ask(stack, "smiling marsupial")[0]["doc_id"] == "gone"
    response = stack.delete("/api/v1/collections/bulk/documents/gone")
    assert response.status_code == 202
    job = stack.wait_job(response.json()["job_id"])
    assert job["state"] == "succeeded" and job["result"]["deleted_chunks"] >= 1
    assert "gone" not in {p["doc_id"] for p in ask(stack, "smiling marsupial", top_k=20)}
    assert stack.get("/api/v1/collections/bulk/documents/gone").status_code == 404
