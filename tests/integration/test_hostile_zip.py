"""Hostile zip uploads through the live API (issue 13): limits hold per archive and per request.

The stack runs with MAX_REQUEST_BYTES=8 MiB and the default UPLOAD_MAX_EXPANDED_BYTES (1 GiB), ZIP_MAX_RATIO
(200): every archive here is small on the wire and only its expanded size is hostile.
"""

from __future__ import annotations

import io
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import Stack

MiB = 1024 * 1024
ARCHIVE_RATIO = re.compile(
    r"bomb\.zip: refused: the archive expands (?P<ratio>\d+)x \(300 MiB from [\d.]+ KiB\), "
    r"above the 200x limit \(zip bomb\?\)"
)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """300 members just under the 1 MiB member floor, ~1000x each: only the whole-archive check sees it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(300):
            zf.writestr(f"part{i:03d}.txt", b" " * (MiB - 1))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def half_budget() -> bytes:
    """An honest archive declaring 520 MiB at ~165x: it passes every per-archive limit, but two of them
    together pass the 1 GiB per-request budget. Noise in zeros sets the ratio; level 1 keeps it quick."""
    rng, buffer = random.Random(13), io.BytesIO()
    zf = zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1)
    with zf, zf.open("data.txt", "w") as out:
        for _ in range(520):
            out.write(rng.randbytes(1300) + bytes(MiB - 1300))
    return buffer.getvalue()


def declared(data: bytes) -> tuple[int, float]:
    """(expanded bytes, expanded/compressed ratio) as the archive's central directory declares them."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    expanded = sum(info.file_size for info in infos)
    return expanded, expanded / sum(info.compress_size for info in infos)


def upload(stack: Stack, collection: str, *files: tuple[str, bytes]) -> requests.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return stack.post("/api/v1/documents", files=parts, data={"collection": collection}, timeout=60)


def problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def upload_dirs(stack: Stack) -> set[Path]:
    """The job directories the API has stored uploads in (DATA_DIR/uploads of the test stack)."""
    uploads = stack.logs.parent / "data" / "uploads"
    return set(uploads.iterdir()) if uploads.exists() else set()


def collection_names(stack: Stack) -> set[str]:
    return {item["name"] for item in stack.get("/api/v1/collections").json()["items"]}


def test_many_member_bomb_is_refused_by_the_archive_ratio(stack: Stack, bomb: bytes) -> None:
    assert len(bomb) < MiB and declared(bomb)[1] > 600
    before = upload_dirs(stack)
    body = problem(upload(stack, "hostile-bomb", ("bomb.zip", bomb)), 422)
    match = ARCHIVE_RATIO.fullmatch(body["detail"])
    assert match and int(match["ratio"]) > 600, body["detail"]
    assert body["errors"] == [{"loc": "files", "msg": body["detail"]}]
    assert upload_dirs(stack) == before  # nothing stored
    assert "hostile-bomb" not in collection_names(stack)  # no job, no collection


def test_archives_over_the_request_budget_together_are_refused(stack: Stack, half_budget: bytes) -> None:
    size, ratio = declared(half_budget)
    assert 512 * MiB < size <= 1024 * MiB and ratio < 190  # each archive alone passes every limit
    good = ("notes.txt", b"Lighthouses use Fresnel lenses to focus their beams.")
    assert 2 * len(half_budget) + len(good[1]) < 7 * MiB  # well within MAX_REQUEST_BYTES
    before = upload_dirs(stack)
    response = upload(stack, "hostile-budget", ("a.zip", half_budget), ("b.zip", half_budget), good)
    body = problem(response, 422)
    assert body["detail"] == (
        "the zip archives of this upload would expand to 1.02 GiB together (a.zip: 520 MiB, b.zip: 520 MiB), "
        "above the 1 GiB limit per upload; send them in separate uploads"
    )
    assert body["errors"] == [
        {"loc": "files", "msg": "a.zip: 520 MiB when expanded"},
        {"loc": "files", "msg": "b.zip: 520 MiB when expanded"},
    ]
    assert upload_dirs(stack) == before  # refused before the job was created: nothing stored or queued
    assert "hostile-budget" not in collection_names(stack)


def test_a_bomb_next_to_a_good_file_fails_alone_with_its_reason(stack: Stack, bomb: bytes) -> None:
    text = b"Tide pools hold anemones, crabs and sea stars between the high and low water marks."
    response = upload(stack, "hostile-mixed", ("tides.txt", text), ("bomb.zip", bomb))
    assert response.status_code == 202, response.text
    job = stack.wait_job(response.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert (job["progress"]["succeeded"], job["progress"]["failed"]) == (1, 1)
    report = stack.get(f"/api/v1/jobs/{job['job_id']}/documents").json()
    outcomes = {item["doc_id"]: item for item in report["items"]}
    assert set(outcomes) == {"tides.txt", "bomb.zip"}
    assert outcomes["tides.txt"]["status"] == "succeeded" and outcomes["tides.txt"]["chunks"] >= 1
    assert outcomes["bomb.zip"]["status"] == "failed" and outcomes["bomb.zip"]["chunks"] == 0
    match = ARCHIVE_RATIO.fullmatch(outcomes["bomb.zip"]["reason"])  # refused by the worker, up front
    assert match and int(match["ratio"]) > 600, outcomes["bomb.zip"]["reason"]
    stored = stack.get("/api/v1/collections/hostile-mixed/documents").json()
    assert [doc["doc_id"] for doc in stored["items"]] == ["tides.txt"]  # nothing of the bomb was ingested
