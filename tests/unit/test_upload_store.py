"""The upload stores keep one contract: the local directory, and an S3 bucket (moto in this process; the
live stand-in server is tests/integration/test_s3_uploads.py). A store that cannot be reached is
ServiceUnavailable, a 503 at submit and a retry in a task."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto import mock_aws

from common.errors import ServiceUnavailable
from common.settings import Settings
from common.types import UploadStore
from store.uploads import LocalUploads, S3Uploads, upload_store

JOB = "0" * 32


@pytest.fixture(params=["local", "s3"])
def uploads(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UploadStore]:
    if request.param == "local":
        yield LocalUploads(tmp_path / "uploads")
        return
    with mock_aws():
        settings = Settings(upload_store="s3", data_dir=tmp_path, s3_bucket="quarry-test", s3_prefix="q/")
        store = S3Uploads(settings, tmp_path / "staging")
        store.ensure_bucket()
        yield store


def test_a_staged_upload_is_published_read_back_and_removed_whole(uploads: UploadStore) -> None:
    staged = uploads.staging(JOB)
    (staged / "00000-a.txt").write_bytes(b"first \xe2\x80\xa8 file")
    (staged / "00001-b.md").write_text("second")
    uploads.publish(JOB)
    uploads.write_text(f"{JOB}/batches/00000.jsonl", '{"id": "a"}\n')
    assert uploads.exists(f"{JOB}/00000-a.txt") and not uploads.exists(f"{JOB}/nope.txt")
    with uploads.local(f"{JOB}/00000-a.txt") as path:
        assert path.read_bytes() == b"first \xe2\x80\xa8 file" and path.name == "00000-a.txt"
    assert uploads.read_text(f"{JOB}/batches/00000.jsonl") == '{"id": "a"}\n'
    uploads.remove(f"{JOB}/batches")
    assert not uploads.exists(f"{JOB}/batches/00000.jsonl") and uploads.exists(f"{JOB}/00001-b.md")
    uploads.remove(JOB)
    assert not uploads.exists(f"{JOB}/00000-a.txt") and not uploads.exists(f"{JOB}/00001-b.md")


def test_only_prefixes_unchanged_for_long_are_stale_and_touch_makes_one_fresh(uploads: UploadStore) -> None:
    uploads.write_text(f"{JOB}/documents.jsonl", "x\n")
    later = time.time() + 60
    assert uploads.stale(later) == [JOB] and uploads.stale(later - 120) == []
    uploads.touch(JOB)
    assert uploads.exists(f"{JOB}/documents.jsonl")


def test_s3_objects_live_under_the_prefix_and_nothing_stays_staged(tmp_path: Path) -> None:
    with mock_aws():
        settings = Settings(upload_store="s3", data_dir=tmp_path, s3_bucket="quarry-test", s3_prefix="q/")
        store = upload_store(settings)
        assert isinstance(store, S3Uploads)
        store.ensure_bucket()
        (store.staging(JOB) / "f.txt").write_text("t")
        store.publish(JOB)
        keys = [o["Key"] for o in store.client.list_objects_v2(Bucket="quarry-test")["Contents"]]
        assert keys == [f"q/{JOB}/f.txt"]
        assert not (tmp_path / "staging" / JOB).exists()  # streamed up, then the staging copy went


def test_an_unreachable_store_is_service_unavailable(tmp_path: Path) -> None:
    settings = Settings(
        upload_store="s3",
        data_dir=tmp_path,
        s3_endpoint_url="http://127.0.0.1:9",  # nothing listens
        s3_access_key_id="k",
        s3_secret_access_key="s",
        s3_timeout_s=1,
    )
    store = upload_store(settings)
    (store.staging(JOB) / "f.txt").write_text("t")
    for call in (
        lambda: store.publish(JOB),
        lambda: store.read_text(f"{JOB}/f.txt"),
        lambda: store.exists(f"{JOB}/f.txt"),
        lambda: store.remove(JOB),
    ):
        with pytest.raises(ServiceUnavailable, match="upload store"):
            call()
    assert not (tmp_path / "staging" / JOB).exists()  # a failed publish leaves no staging copy either
