"""MilvusStore behaviour that needs no server: load-on-read after a Milvus restart, error mapping."""

from __future__ import annotations

from typing import Any

import pytest
from pymilvus import MilvusException

from common.errors import ServiceUnavailable
from store.milvus import MilvusStore, milvus_errors


class FakeClient:
    def __init__(self, exists: bool, state: str) -> None:
        self._exists, self.state, self.loads = exists, state, 0

    def has_collection(self, name: str) -> bool:
        return self._exists

    def get_load_state(self, name: str) -> dict[str, Any]:
        return {"state": self.state}

    def load_collection(self, name: str) -> None:
        self.loads += 1
        self.state = "Loaded"


def store_with(client: FakeClient) -> MilvusStore:
    store = MilvusStore.__new__(MilvusStore)
    store.name, store.client = "quarry_chunks", client  # type: ignore[assignment]
    return store


def test_a_released_collection_is_loaded_before_reads() -> None:
    client = FakeClient(exists=True, state="NotLoad")
    assert store_with(client).exists() and client.loads == 1
    assert store_with(client).exists() and client.loads == 1  # already loaded: no second load


def test_a_missing_collection_is_not_created_by_a_read() -> None:
    client = FakeClient(exists=False, state="NotExist")
    assert not store_with(client).exists() and client.loads == 0


def test_a_released_collection_error_is_unavailable_not_a_crash() -> None:
    with pytest.raises(ServiceUnavailable, match="released"), milvus_errors("query"):
        raise MilvusException(101, "Collection 'quarry_chunks' is in state 'released'; call load()")
