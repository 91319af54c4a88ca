"""The write protocol on a model of Milvus: a new version goes beside the old one, which is pruned only after
it; a write cut short never leaves half a version; a pending delete is never mistaken for stored content.

The integration tests (tests/integration/test_crash_windows.py) kill real workers in each of these windows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from common.settings import Settings
from common.types import Chunk, Document
from ingestion.pipeline import DELETED, SUPERSEDED, Held, content_hash, ingest_documents
from tests.unit.test_ingest_isolation import FakeEmbedder, FakeStore

Key = tuple[str, int, str]  # doc id, chunk index, version


class VersionedStore(FakeStore):
    """Rows keyed like the real pks (document, index, version), each with the seq of its writer."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.rows: dict[Key, int] = {}
        self.fail_after = fail_after  # rows written before the write "dies"
        self.marks: set[str] = set()  # what common.fences keeps in Redis: documents being written
        self.prunes = 0

    def document_versions(self, collection: str, doc_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for (doc_id, index, digest), seq in self.rows.items():
            if doc_id in doc_ids and index == 0:
                found.setdefault(doc_id, {})[digest] = seq
        return found

    def insert(
        self, collection: str, chunks: Sequence[Chunk], vectors: Any, hashes: Mapping[str, str], seq: int = 0
    ) -> int:
        for n, chunk in enumerate(sorted(chunks, key=lambda c: c.index == 0)):
            if self.fail_after is not None and n >= self.fail_after:
                raise KeyboardInterrupt("killed")  # not an Exception: nothing catches it, like SIGKILL
            self.rows[(chunk.doc_id, chunk.index, hashes[chunk.doc_id])] = seq
        return len(chunks)

    def prune(self, collection: str, keep: Mapping[str, Collection[str]]) -> None:
        self.prunes += bool(keep)
        for key in [k for k in self.rows if k[0] in keep and k[2] not in keep[k[0]]]:
            del self.rows[key]

    def versions_of(self, doc_id: str) -> set[str]:
        return {digest for (d, _, digest) in self.rows if d == doc_id}


def ingest(
    store: VersionedStore, docs: list[Document], seq: int, floors: dict[str, int] | None = None
) -> Any:
    @contextmanager
    def lock(collection: str, ids: Sequence[str]) -> Any:
        yield Held(floors or {}, store.marks & set(ids), store.marks.update, store.marks.difference_update)

    settings = Settings(chunk_tokens=17, chunk_overlap_tokens=0)  # several chunks per document
    return ingest_documents(
        list(docs),
        collection="c",
        on_duplicate="replace",
        embedder=FakeEmbedder(),
        store=store,
        settings=settings,
        seq=seq,
        lock=lock,
    )


V1 = Document("a", " ".join(f"one{i}" for i in range(40)))
V2 = Document("a", " ".join(f"uno{i}" for i in range(60)))


def test_a_replace_leaves_only_the_new_version() -> None:
    store = VersionedStore()
    ingest(store, [V1], seq=1)
    [outcome] = ingest(store, [V2], seq=2)
    assert outcome.status == "succeeded"
    assert store.versions_of("a") == {content_hash(V2)}


def test_a_replace_cut_short_keeps_the_old_version_whole_and_the_next_write_cleans_up() -> None:
    store = VersionedStore()
    ingest(store, [V1], seq=1)
    v1_rows = dict(store.rows)
    store.fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        ingest(store, [V2], seq=2)
    assert {k: v for k, v in store.rows.items() if k[2] == content_hash(V1)} == v1_rows  # old version whole
    assert not any(k[2] == content_hash(V2) and k[1] == 0 for k in store.rows)  # new one never looks whole
    assert store.marks == {"a"}  # left behind by the write cut short
    store.fail_after = None
    [outcome] = ingest(store, [V2], seq=2)  # the redelivery
    assert outcome.status == "succeeded" and store.versions_of("a") == {content_hash(V2)}
    assert store.marks == set()


def test_stray_rows_of_a_write_cut_short_go_even_when_nothing_was_stored_before() -> None:
    store = VersionedStore(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        ingest(store, [V1], seq=1)
    store.fail_after = None
    [outcome] = ingest(store, [V2], seq=2)  # another version, by another job
    assert outcome.status == "succeeded" and store.versions_of("a") == {content_hash(V2)}


def test_a_document_written_for_the_first_time_costs_no_prune() -> None:
    store = VersionedStore()
    ingest(store, [V1, Document("b", "bee")], seq=1)
    assert store.prunes == 0 and store.marks == set()


def test_two_whole_versions_left_by_a_kill_before_the_prune_settle_on_the_written_one() -> None:
    store = VersionedStore()
    ingest(store, [V1], seq=1)
    ingest(store, [V2], seq=2)
    store.rows.update({("a", 0, content_hash(V1)): 1})  # as if the prune had not run
    [outcome] = ingest(store, [V2], seq=2)  # the redelivery finds its version stored
    assert outcome.status == "skipped" and store.versions_of("a") == {content_hash(V2)}


def test_identical_content_under_a_pending_delete_is_written_again_not_skipped() -> None:
    store = VersionedStore()
    ingest(store, [V1], seq=1)
    [outcome] = ingest(store, [V1], seq=5, floors={"a": 3})  # a delete numbered 3 has not run yet
    assert outcome.status == "succeeded"
    assert set(store.rows.values()) == {5}  # rewritten under 5: the delete (rows below 3) spares it


def test_a_document_deleted_after_its_upload_was_accepted_is_not_written() -> None:
    store = VersionedStore()
    [outcome] = ingest(store, [V1], seq=2, floors={"a": 3})
    assert (outcome.status, outcome.reason) == ("failed", DELETED)
    assert store.rows == {}


def test_a_late_batch_never_overwrites_a_version_from_a_later_accepted_upload() -> None:
    """A batch redelivered long after (its worker lost) must not put back an older version."""
    store = VersionedStore()
    ingest(store, [V2], seq=9)
    [outcome] = ingest(store, [V1], seq=4)
    assert (outcome.status, outcome.reason) == ("skipped", SUPERSEDED)
    assert store.versions_of("a") == {content_hash(V2)}


def test_two_whole_versions_settle_on_the_latest_accepted_even_for_an_older_upload_of_one_of_them() -> None:
    store = VersionedStore()
    ingest(store, [V1], seq=1)
    ingest(store, [V2], seq=9)
    store.rows.update({(k[0], k[1], content_hash(V1)): 1 for k in list(store.rows)})  # v1 left unpruned
    ingest(store, [V1], seq=4)  # an older upload of v1 arrives late
    assert store.versions_of("a") == {content_hash(V2)}
