"""Error mapping: every domain error and every client mistake becomes problem+json, never a 500."""

from __future__ import annotations

import subprocess
import sys

import pytest
from flask import Flask

from api import create_app, problems
from common import errors
from common.settings import Settings


@pytest.fixture
def app(tmp_path: pytest.TempPathFactory) -> Flask:
    # An unreachable Redis: these requests must be refused before anything is stored.
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path))  # type: ignore[arg-type]


def test_every_domain_error_has_a_status() -> None:
    domain = {
        cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.QuarryError)
    }
    assert domain - {errors.QuarryError} == set(problems.STATUS)
    assert all(400 <= status < 600 for status in problems.STATUS.values())


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.InvalidRequest("bad"), 422),
        (errors.NotFound("gone"), 404),
        (errors.PayloadTooLarge("big"), 413),
        (errors.UnsupportedMediaType("exe"), 415),
        (errors.Conflict("model"), 409),
        (errors.ServiceUnavailable("redis down"), 503),
    ],
)
def test_domain_errors_render_as_problems(app: Flask, exc: errors.QuarryError, status: int) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise exc

    response = app.test_client().get("/boom")
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.json == {
        "type": "about:blank",
        "title": exc.title,
        "status": status,
        "detail": exc.detail,
        "instance": "/boom",
    }


def test_client_mistakes_are_4xx_without_touching_redis(app: Flask) -> None:
    client = app.test_client()
    cases = [
        (client.post("/api/v1/ask", data="{", content_type="application/json"), 400),
        (client.post("/api/v1/ask", data="hi", content_type="text/plain"), 415),
        (client.post("/api/v1/ask", json={"question": ""}), 422),
        (client.post("/api/v1/ask", json={"question": "q", "top_k": 101}), 422),
        (client.post("/api/v1/ask", json={"question": "q", "reranker": "magic"}), 422),
        (client.post("/api/v1/ask", json={"question": "q", "rerank": False, "reranker": "maxsim"}), 422),
        (client.get("/api/v1/jobs/nope"), 404),
        (client.put("/api/v1/ask"), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, response.json
        assert response.mimetype == "application/problem+json"
        assert response.json["detail"]


def test_redis_down_is_503_problem(app: Flask) -> None:
    response = app.test_client().get("/api/v1/jobs/" + "a" * 32)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "Redis" in response.json["detail"]
    assert response.headers["Retry-After"]


def test_payload_too_large_is_413(tmp_path: pytest.TempPathFactory) -> None:
    app = create_app(Settings(max_request_bytes=1000, data_dir=tmp_path))  # type: ignore[arg-type]
    response = app.test_client().post("/api/v1/documents", json={"documents": [{"text": "x" * 5000}]})
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def test_api_does_not_import_torch() -> None:
    code = "import sys, api; api.create_app(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
