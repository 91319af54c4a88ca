"""End to end on real Redis, Milvus, Celery workers and the bundled model."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Stack

DOCUMENTS = [
    {
        "id": "volcano",
        "title": "Volcanoes",
        "text": "A volcano is a rupture in the crust of a planet that allows hot lava, volcanic ash and "
        "gases to escape from a magma chamber below the surface. Mount Etna in Sicily erupts often.",
    },
    {
        "id": "photosynthesis",
        "title": "Photosynthesis",
        "text": "Photosynthesis is the process by which green plants use sunlight, water and carbon "
        "dioxide to make glucose and release oxygen. It happens in the chloroplasts of leaf cells.",
    },
    {
        "id": "tides",
        "title": "Ocean tides",
        "text": "Tides are the rise and fall of sea levels caused by the gravitational pull of the Moon and "
        "the Sun on the oceans of the Earth.",
        "metadata": {"lang": "en"},
    },
    {
        "id": "espresso",
        "title": "Espresso",
        "text": "Espresso is coffee brewed by forcing a small amount of nearly boiling water under pressure "
        "through finely ground coffee beans, topped by a crema.",
    },
    {
        "id": "rust",
        "title": "Iron oxide",
        "text": "Rust is iron oxide, formed when iron reacts with oxygen in the presence of water or "
        "moist air over time.",
    },
]


@pytest.fixture(scope="module")
def ingested(stack: Stack) -> dict[str, Any]:
    job = stack.run("/api/v1/documents", json={"documents": DOCUMENTS, "collection": "science"})
    assert job["state"] == "succeeded", job
    return job


def test_health_names_every_dependency(stack: Stack) -> None:
    body = stack.get("/healthz").json()
    assert body["status"] == "ok"
    assert {"redis", "broker", "milvus"} <= body["checks"].keys()


def test_ingest_job_reports_progress_and_result(ingested: dict[str, Any]) -> None:
    assert ingested["kind"] == "ingest"
    chunks = ingested["result"]["chunks"]
    assert chunks >= 5
    expected = {"done": 5, "total": 5, "succeeded": 5, "failed": 0, "skipped": 0, "chunks": chunks}
    assert ingested["progress"] == expected
    assert ingested["result"] == {"collection": "science", **expected}
    assert ingested["created_at"] <= ingested["started_at"] <= ingested["finished_at"]
    assert ingested["error"] is None


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Why does the sea level rise and fall every day?", "tides"),
        ("How do plants turn light into sugar?", "photosynthesis"),
        ("Which mountain in Sicily spits lava?", "volcano"),
    ],
)
def test_ask_returns_the_answering_document_first(
    stack: Stack, ingested: dict[str, Any], question: str, expected: str
) -> None:
    job = stack.run("/api/v1/ask", json={"question": question, "collection": "science"})
    assert job["state"] == "succeeded", job
    passages = job["result"]["passages"]
    assert passages[0]["doc_id"] == expected
    assert len(passages) == 5
    first = passages[0]
    assert {"doc_id", "chunk_index", "title", "text", "metadata", "scores"} <= first.keys()
    assert {"fusion", "dense", "rerank", "final"} <= first["scores"].keys()


def test_ask_without_reranker_and_other_collection(stack: Stack, ingested: dict[str, Any]) -> None:
    job = stack.run(
        "/api/v1/ask",
        json={
            "question": "coffee brewed under pressure",
            "collection": "science",
            "rerank": False,
            "top_k": 2,
        },
    )
    assert job["result"]["passages"][0]["doc_id"] == "espresso"
    assert job["result"]["reranker"] is None and len(job["result"]["passages"]) == 2
    empty = stack.run("/api/v1/ask", json={"question": "coffee", "collection": "other"})
    assert empty["state"] == "succeeded" and empty["result"]["passages"] == []


def test_multipart_upload_of_text_files(stack: Stack) -> None:
    files = [
        (
            "files",
            (
                "notes.md",
                b"# Glaciers\n\nGlaciers are slow rivers of ice that carve valleys.",
                "text/markdown",
            ),
        ),
        ("files", ("plain.txt", b"Honey bees communicate with a waggle dance.", "text/plain")),
    ]
    job = stack.run("/api/v1/documents", files=files, data={"collection": "uploads"})
    assert job["state"] == "succeeded", job
    answer = stack.run(
        "/api/v1/ask", json={"question": "how do bees talk to each other", "collection": "uploads"}
    )
    assert answer["result"]["passages"][0]["doc_id"] == "plain.txt"
    glacier = stack.run("/api/v1/ask", json={"question": "ice carving valleys", "collection": "uploads"})
    assert glacier["result"]["passages"][0]["title"] == "Glaciers"


def test_reingesting_a_document_replaces_its_chunks(stack: Stack) -> None:
    long_text = " ".join(f"Sentence number {i} talks about lighthouses and ships." for i in range(120))
    first = stack.run(
        "/api/v1/documents",
        json={"collection": "replace", "documents": [{"id": "doc", "text": long_text}]},
    )
    assert first["result"]["chunks"] > 1
    second = stack.run(
        "/api/v1/documents",
        json={
            "collection": "replace",
            "documents": [{"id": "doc", "text": "Now it is about submarines."}],
        },
    )
    assert second["result"]["chunks"] == 1
    answer = stack.run(
        "/api/v1/ask",
        json={"question": "lighthouses", "collection": "replace", "top_k": 10, "rerank": False},
    )
    assert [p["chunk_index"] for p in answer["result"]["passages"]] == [0]


def test_failing_task_marks_the_job_failed_with_reason(stack: Stack) -> None:
    # Passes the API's cheap checks (it starts like a PDF), so the worker's parser is what refuses it.
    files = [("files", ("broken.pdf", b"%PDF-1.7\nthis is not a PDF body\n", "application/pdf"))]
    job = stack.run("/api/v1/documents", files=files)
    assert job["state"] == "failed"
    assert "no document could be ingested" in job["error"]
    assert job["error"].count("broken.pdf") == 1, job["error"]  # the reason names the file once
    assert job["result"] is None and job["finished_at"]
    report = stack.get(f"/api/v1/jobs/{job['job_id']}/documents").json()
    [item] = report["items"]
    assert item["doc_id"] == "broken.pdf" and item["status"] == "failed"
    assert item["reason"].startswith("broken.pdf")


def test_unknown_job_is_404_problem(stack: Stack) -> None:
    for job_id in ("0" * 32, "not-a-job"):
        response = stack.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["status"] == 404


def test_long_poll_returns_when_job_ends(stack: Stack, ingested: dict[str, Any]) -> None:
    response = stack.post("/api/v1/ask", json={"question": "espresso crema", "collection": "science"})
    job_id = response.json()["job_id"]
    body = stack.get(f"/api/v1/jobs/{job_id}", params={"wait": 25}).json()
    assert body["state"] == "succeeded"


@pytest.mark.parametrize(
    ("options", "score"),
    [
        ({"mode": "dense"}, "dense"),
        ({"mode": "bm25"}, "bm25"),
        ({"mode": "dense", "exact": True}, "dense"),
        ({"mode": "hybrid", "ef": 16, "rrf_k": 10, "candidates": 3}, "fusion"),
    ],
)
def test_stage_switches(stack: Stack, ingested: dict[str, Any], options: dict[str, Any], score: str) -> None:
    body = {"question": "tides caused by the gravitational pull of the Moon", "collection": "science"}
    job = stack.run("/api/v1/ask", json={**body, **options, "rerank": False})
    assert job["state"] == "succeeded", job
    first = job["result"]["passages"][0]
    assert first["doc_id"] == "tides"
    assert first["scores"][score] is not None
    expected_mode = "exact-dense" if options.get("exact") else options["mode"]
    assert job["result"]["mode"] == expected_mode


def test_exact_search_needs_dense_mode(stack: Stack) -> None:
    response = stack.post("/api/v1/ask", json={"question": "q", "exact": True})
    assert response.status_code == 422 and "dense" in response.json()["detail"]


QUESTIONS = {
    "Which mountain in Sicily erupts?": "volcano",
    "How do plants make glucose from sunlight?": "photosynthesis",
    "What makes the sea level rise and fall?": "tides",
    "How is espresso coffee brewed?": "espresso",
    "What forms when iron meets water and oxygen?": "rust",
}


def test_questions_sent_together_are_batched_and_each_gets_its_own_answer(
    stack: Stack, ingested: dict[str, Any]
) -> None:
    job_ids = {}
    for question in list(QUESTIONS) * 2:  # queued back to back; the ask worker has 8 task threads
        response = stack.post("/api/v1/ask", json={"question": question, "collection": "science", "top_k": 1})
        assert response.status_code == 202, response.text
        job_ids[response.json()["job_id"]] = question
    jobs = {job_id: stack.wait_job(job_id) for job_id in job_ids}
    assert all(job["state"] == "succeeded" for job in jobs.values()), jobs
    for job_id, job in jobs.items():
        assert job["result"]["passages"][0]["doc_id"] == QUESTIONS[job_ids[job_id]]
        assert job["result"]["reranker"] == "maxsim"
    assert max(job["result"]["timings"]["batch_size"] for job in jobs.values()) > 1


def test_per_request_reranker_backend_that_cannot_load_fails_the_job_with_a_reason(
    stack: Stack, ingested: dict[str, Any]
) -> None:
    job = stack.run(
        "/api/v1/ask", json={"question": "lava", "collection": "science", "reranker": "cross-encoder"}
    )
    assert job["state"] == "failed"
    assert "cross-encoder 'BAAI/bge-reranker-v2-m3' cannot be loaded" in job["error"]  # offline: no hub
    after = stack.run("/api/v1/ask", json={"question": "lava", "collection": "science", "top_k": 1})
    assert after["state"] == "succeeded" and after["result"]["passages"][0]["doc_id"] == "volcano"
