"""The OpenAPI document and request validation come from one place (spectree over api.schemas)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from api import create_app
from api.schemas import AskRequest
from common.settings import Settings

JOB = "/api/v1/jobs/" + "0" * 32


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    # Nothing here reaches Redis: every request fails validation before a view touches a service.
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0")).test_client()


@pytest.fixture(scope="module")
def doc(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_every_route_is_documented_once(doc: dict[str, Any]) -> None:
    operations = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert len(operations) == 16
    assert ("POST", "/api/v1/ask") in operations
    assert ("GET", "/api/v1/jobs/{job_id}/events") in operations
    assert ("GET", "/api/v1/jobs") in operations
    assert ("GET", "/api/v1/jobs/{job_id}") in operations
    assert doc["openapi"].startswith("3.1")


def test_bodies_come_from_the_validating_models(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas["AskRequest"]["properties"]) == set(AskRequest.model_fields)
    body = doc["paths"]["/api/v1/documents"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= body.keys()
    files = schemas["UploadForm"]["properties"]["files"]
    assert files["items"] == {"format": "binary", "type": "string"}


def test_the_event_stream_is_documented_as_what_it_is(doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/api/v1/jobs/{job_id}/events"]["get"]["responses"]
    assert responses["200"]["content"] == {"text/event-stream": {"schema": {"type": "string"}}}
    assert responses["200"]["description"] == "the job's events"
    assert "content" not in responses["204"]
    assert responses["404"]["content"]["application/problem+json"]["schema"]["$ref"].endswith("/Problem")


def test_keys_are_required_except_for_health(doc: dict[str, Any]) -> None:
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/readyz"]["get"]["security"] == []


def test_errors_are_documented_as_problem_json(doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/api/v1/ask"]["post"]["responses"]
    assert responses["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobAccepted")
    for status in ("400", "415", "422", "429"):
        assert list(responses[status]["content"]) == ["application/problem+json"], status


def test_the_docs_pages_load_the_same_document(client: FlaskClient, doc: dict[str, Any]) -> None:
    assert client.get("/docs/openapi.json").get_json() == doc


def test_docs_work_offline(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 302
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    assert b"SwaggerUIBundle" in page.data
    assert not re.search(rb"<script[^>]+src=\"https?://", page.data), "the docs must not load from a CDN"


@pytest.mark.parametrize(
    ("kwargs", "status", "detail"),
    [
        ({"data": "{oops", "content_type": "application/json"}, 400, "not valid JSON"),
        ({"data": "", "content_type": "application/json"}, 400, "not valid JSON"),
        ({"data": "question", "content_type": "text/plain"}, 415, "expected application/json"),
        ({"json": {}}, 422, "question: Field required"),
        ({"json": {"question": "hi", "top_k": 0}}, 422, "top_k"),
        ({"json": {"question": "hi", "extra": 1}}, 422, "extra: Extra inputs are not permitted"),
    ],
)
def test_bad_bodies_are_problems(
    client: FlaskClient, kwargs: dict[str, Any], status: int, detail: str
) -> None:
    response = client.post("/api/v1/ask", **kwargs)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert detail in response.get_json()["detail"]


def test_a_text_field_the_form_does_not_know_is_refused(client: FlaskClient) -> None:
    data = {"colection": "typo", "files": (io.BytesIO(b"hello"), "a.txt")}
    response = client.post("/api/v1/documents", data=data, content_type="multipart/form-data")
    assert response.status_code == 422
    assert "colection: Extra inputs are not permitted" in response.get_json()["detail"]


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        (JOB + "?wait=soon", "wait"),
        (JOB + "?wait=inf", "finite"),
        (JOB + "?wait=-1", "greater than or equal to 0"),
        (JOB + "/documents?status=lost", "status"),
        ("/api/v1/collections/c/documents?limit=0", "limit"),
        ("/api/v1/collections/c/documents?offset=20000", "offset"),
    ],
)
def test_bad_query_strings_are_problems(client: FlaskClient, path: str, detail: str) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert detail in response.get_json()["detail"]
