"""The upload sweeper against a real Redis: what is due goes, once; what is kept or unknown stays."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.retention import DUE_KEY, UploadRetention, upload_dirs
from devstack.processes import redis_answers
from store.uploads import LocalUploads
from workers.sweeper import sweep

REDIS_URL = "redis://127.0.0.1:6379/13"  # shared with test_admission: both flush it, neither runs at once
DAY = 24 * 3600


@pytest.fixture
def retention() -> Iterator[UploadRetention]:
    if not redis_answers(REDIS_URL):
        pytest.skip("needs Redis on 127.0.0.1:6379 (.ci/run starts one)")
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield UploadRetention(client, retention_s=60)
    client.flushdb()


def job_dir(uploads: Path, age_s: float = 0) -> str:
    name = uuid.uuid4().hex
    (uploads / name / "batches").mkdir(parents=True)
    (uploads / name / "upload.txt").write_text("x")
    if age_s:
        then = time.time() - age_s
        os.utime(uploads / name, (then, then))
    return name


def test_due_uploads_go_kept_ones_stay_and_orphans_go_once_older_than_any_record(
    retention: UploadRetention, tmp_path: Path
) -> None:
    now = time.time()
    due, kept, orphan, fresh = (
        job_dir(tmp_path),
        job_dir(tmp_path),
        job_dir(tmp_path, 9 * DAY),
        job_dir(tmp_path),
    )
    (tmp_path / "not-a-job").mkdir()
    retention.schedule([due], now=now - 61)  # ended 61 s ago: due
    retention.schedule([kept], now=now)  # due in 60 s
    removed = sweep(retention, LocalUploads(tmp_path), orphan_age_s=8 * DAY, now=now)
    assert sorted(removed) == sorted([due, orphan])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kept, fresh, "not-a-job"])
    assert retention.scheduled() == {kept}
    assert sweep(retention, LocalUploads(tmp_path), orphan_age_s=8 * DAY, now=now) == []  # claimed once only


def test_a_later_end_never_brings_a_deletion_forward_and_a_retry_pins_its_upload(
    retention: UploadRetention, tmp_path: Path
) -> None:
    upload = job_dir(tmp_path)
    retention.schedule([upload], now=1_000_000)
    retention.schedule([upload], now=500)  # an earlier end recorded late: the later due time stays
    assert retention.client.zscore(DUE_KEY, upload) == 1_000_060
    retention.pin([upload])  # a retry reads it: never due while the retry runs
    assert sweep(retention, LocalUploads(tmp_path), orphan_age_s=DAY, now=2_000_000) == []
    assert (tmp_path / upload).is_dir()


def test_a_retry_job_uses_its_own_directory_and_the_upload_it_reads() -> None:
    request = {
        "source": {"kind": "files", "files": [{"path": "aaaa/00000-a.txt"}, {"path": "aaaa/00001-b.pdf"}]}
    }
    assert upload_dirs("bbbb", request) == {"bbbb", "aaaa"}
    assert upload_dirs("cccc", {"source": {"kind": "jsonl", "path": "cccc/documents.jsonl"}}) == {"cccc"}
