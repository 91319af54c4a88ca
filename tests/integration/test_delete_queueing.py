"""A delete whose job cannot be queued changes nothing: the collection keeps its name and its documents."""

from __future__ import annotations

from pathlib import Path

from api import create_app
from common.settings import Settings
from devstack.processes import free_port
from tests.integration.conftest import API_KEYS, Stack, bearer


def test_a_collection_delete_that_cannot_be_queued_leaves_the_collection_listed(
    stack: Stack, tmp_path: Path
) -> None:
    job = stack.run(
        "/api/v1/documents", json={"collection": "kept", "documents": [{"id": "k", "text": "kept"}]}
    )
    assert job["state"] == "succeeded", job

    settings = Settings(
        redis_url=stack.redis_url,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: queueing fails
        milvus_uri=stack.env["MILVUS_URI"],
        milvus_collection=stack.env["MILVUS_COLLECTION"],
        data_dir=tmp_path,
        api_keys=API_KEYS,
    )
    response = create_app(settings).test_client().delete("/api/v1/collections/kept", headers=bearer("main"))
    assert response.status_code == 503 and response.mimetype == "application/problem+json", response.json

    names = [item["name"] for item in stack.get("/api/v1/collections").json()["items"]]
    assert "kept" in names  # before, the name went first and the collection vanished from the list
    assert stack.get("/api/v1/collections/kept/documents/k").status_code == 200
