"""Bad input, table-driven, through the real API: each request gets the right 4xx as problem+json, never
a 5xx, and the service keeps serving afterwards."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest

from tests.integration.conftest import Stack


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def upload(name: str, data: bytes, ctype: str = "application/octet-stream") -> dict[str, Any]:
    return {"files": [("files", (name, data, ctype))]}


JOB = "/api/v1/jobs/" + "0" * 32
TOO_MANY_FILES = {"files": [("files", (f"f{i}.txt", b"tiny", "text/plain")) for i in range(1001)]}

BAD_REQUESTS = [
    ("post", "/api/v1/ask", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400),
    ("post", "/api/v1/ask", {"data": "question=hi", "headers": {"Content-Type": "text/plain"}}, 415),
    ("post", "/api/v1/ask", {"json": {}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "   "}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "x" * 5000}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "top_k": 0}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "top_k": 1000}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "collection": "Bad Name!"}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "surprise": 1}}, 422),
    ("post", "/api/v1/ask", {"json": ["question"]}, 422),
    ("post", "/api/v1/documents", {"json": {"documents": []}}, 422),
    ("post", "/api/v1/documents", {"json": {"documents": [{"text": ""}]}}, 422),
    (
        "post",
        "/api/v1/documents",
        {"json": {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}},
        422,
    ),
    ("post", "/api/v1/documents", {"files": [("f", ("evil.exe", b"MZ", "application/octet-stream"))]}, 415),
    ("post", "/api/v1/documents", {"json": {"documents": [{"text": "x"}], "on_duplicate": "maybe"}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "filters": {"text": "x"}}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "filters": {"metadata.a b": 1}}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "filters": {"collection": "x"}}}, 422),
    ("get", "/api/v1/collections/nope-never", {}, 404),
    ("get", "/api/v1/collections/Bad!", {}, 404),
    ("post", "/api/v1/documents", {"files": [("f", ("empty.txt", b"", "text/plain"))]}, 422),
    ("get", "/api/v1/jobs/" + "0" * 32 + "?wait=abc", {}, 422),
    ("get", "/api/v1/nowhere", {}, 404),
    ("delete", "/api/v1/ask", {}, 405),
    # added with the reliability work
    (
        "post",
        "/api/v1/ask",
        {"data": b'{"question": "caf\xe9"}', "headers": {"Content-Type": "application/json"}},
        400,
    ),
    ("post", "/api/v1/ask", {"data": "", "headers": {"Content-Type": "application/json"}}, 400),
    ("post", "/api/v1/ask", {"json": {"question": 42}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "top_k": "five"}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "mode": "telepathy"}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "ef": 0}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "exact": True}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi", "filters": "doc_id == 'x'"}}, 422),
    ("post", "/api/v1/ask", {"json": {"question": "hi"}, "headers": {"Authorization": "Bearer nope"}}, 401),
    ("post", "/api/v1/ask", {"json": {"question": "hi"}, "headers": {"Idempotency-Key": "has space"}}, 422),
    ("post", "/api/v1/documents", {"json": {"documents": [{"text": "x", "metadata": []}]}}, 422),
    ("post", "/api/v1/documents", {"json": {"documents": [{"id": "x" * 600, "text": "x"}]}}, 422),
    ("post", "/api/v1/documents", {"json": {"collection": "UPPER", "documents": [{"text": "x"}]}}, 422),
    (
        "post",
        "/api/v1/documents",
        {"data": b"x" * (9 * 1024 * 1024), "headers": {"Content-Type": "application/json"}},
        413,
    ),
    ("post", "/api/v1/documents", {"files": []}, 415),
    ("post", "/api/v1/documents", {"files": [("collection", (None, "c"))]}, 422),
    ("post", "/api/v1/documents", TOO_MANY_FILES, 413),
    (
        "post",
        "/api/v1/documents",
        upload("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "text/plain"),
        422,
    ),
    ("post", "/api/v1/documents", upload("broken.pdf", b"this is not a pdf at all"), 422),
    ("post", "/api/v1/documents", upload("escape.zip", zip_bytes({"../../etc/cron.d/x.txt": b"owned"})), 422),
    ("post", "/api/v1/documents", upload("absolute.zip", zip_bytes({"/etc/passwd.txt": b"root"})), 422),
    ("post", "/api/v1/documents", upload("bomb.zip", zip_bytes({"zeros.txt": bytes(20 * 1024 * 1024)})), 422),
    ("post", "/api/v1/documents", upload("garbage.zip", b"PK\x03\x04 truncated"), 422),
    ("get", JOB, {}, 404),
    ("get", "/api/v1/jobs/not-a-job-id", {}, 404),
    ("get", JOB + "?wait=-1", {}, 422),
    ("get", JOB + "/documents", {}, 404),
    ("post", JOB + "/retry", {}, 404),
    ("delete", JOB, {}, 404),
    ("get", "/api/v1/collections/default/documents?limit=0", {}, 422),
    ("get", "/api/v1/collections/default/documents?offset=-5", {}, 422),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), BAD_REQUESTS)
def test_bad_input_gets_problem_json(
    stack: Stack, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = stack.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]


def test_the_table_is_long_enough() -> None:
    assert len(BAD_REQUESTS) >= 30


def test_service_keeps_serving_after_bad_input(stack: Stack) -> None:
    for method, path, kwargs, _ in BAD_REQUESTS[:5]:
        stack.request(method, path, **kwargs)
    assert stack.get("/healthz").status_code == 200
    job = stack.run(
        "/api/v1/documents", json={"collection": "after-bad", "documents": [{"text": "still fine"}]}
    )
    assert job["state"] == "succeeded"


def test_an_upload_with_one_good_file_keeps_it_and_fails_only_the_bad_one(stack: Stack) -> None:
    files = [
        ("files", ("good.txt", b"Lighthouses use Fresnel lenses to focus their beams.", "text/plain")),
        ("files", ("bad.pdf", b"not a pdf", "application/pdf")),
    ]
    job = stack.run("/api/v1/documents", files=files, data={"collection": "mixed-upload"})
    assert job["progress"]["succeeded"] == 1 and job["progress"]["failed"] == 1
