"""Uploads in an S3-compatible store on the live stack: the API and the workers each with a data directory
of their own (nothing shared but Redis, Milvus and the store), the store a real S3 HTTP server (moto's
standalone server, the stand-in: no MinIO binary installs here). JSON, files and a zip are ingested and
asked; the batch files go to the bucket too; a retry reads the upload back from the bucket; retention
deletes it from the bucket; a store that is down is a 503 at submit and no job is created."""

from __future__ import annotations

import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
import requests

from common.settings import Settings
from devstack.processes import Supervisor, api_argv, free_port, service_workers, wait_until
from tests.integration.conftest import TEST_REDIS_DB, Stack, healthy

pytestmark = pytest.mark.integration
S3_DB = 7 if TEST_REDIS_DB != 7 else 6  # 8-12: other modules' databases
BUCKET = "quarry-uploads"
RETENTION_S = 5


def _moto(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(url), 60, "S3 stand-in", proc)
    return proc


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


@dataclass
class S3Stack:
    api: Stack
    s3_url: str
    s3_port: int
    hosts: dict[str, Path]  # the API's and the workers' data directories
    moto: subprocess.Popen[bytes]
    log: Path

    def bucket(self) -> Any:
        client = boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        return client

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.bucket().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture(scope="module")
def s3(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Stack]:
    tmp = tmp_path_factory.mktemp("s3-uploads")
    s3_port, api_port = free_port(), free_port()
    moto = _moto(s3_port, tmp / "moto.log")
    redis_url = stack.redis_url.rsplit("/", 1)[0] + f"/{S3_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    base = {
        **stack.env,
        "REDIS_URL": redis_url,
        "MILVUS_COLLECTION": "quarry_s3",  # its own Milvus collection: writers never share one
        "UPLOAD_STORE": "s3",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "S3_BUCKET": BUCKET,
        "S3_ACCESS_KEY_ID": "test",
        "S3_SECRET_ACCESS_KEY": "test",
        "S3_TIMEOUT_S": "3",
        "UPLOAD_RETENTION_S": str(RETENTION_S),
        "SWEEP_INTERVAL_S": "1",
    }
    hosts = {"api": tmp / "api-host", "workers": tmp / "worker-host"}
    workers = Supervisor(env={**base, "DATA_DIR": str(hosts["workers"])}, log_dir=tmp / "logs")
    api = Supervisor(
        env={**base, "DATA_DIR": str(hosts["api"]), "API_PORT": str(api_port)}, log_dir=tmp / "logs"
    )
    try:
        for name, argv in service_workers(Settings(), ask_threads=2, webhooks=1):
            workers.start(name, argv)
        proc = api.start("api", api_argv("127.0.0.1", api_port))
        url = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: healthy(url, "/readyz"), 180, "API and warm workers", proc)
        yield S3Stack(
            Stack(url=url, redis_url=redis_url, logs=tmp / "logs", env=base),
            f"http://127.0.0.1:{s3_port}",
            s3_port,
            hosts,
            moto,
            tmp / "moto.log",
        )
    finally:
        api.stop()
        workers.stop()
        moto.terminate()
        moto.wait(10)
        redis.Redis.from_url(redis_url).flushdb()


def files_left(host: Path) -> list[str]:
    """Upload or batch files a host kept on its own disk (the staging and download areas must be empty);
    the metrics files and the device's lock file are each host's own."""
    found = [p for p in host.rglob("*") if p.is_file() and not {"prometheus", "gate"} & set(p.parts)]
    return sorted(str(p.relative_to(host)) for p in found)


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("volcano.txt", "Volcanoes erupt molten rock called lava from the mantle.")
        archive.writestr("glaciers.md", "# Glaciers\n\nGlaciers are rivers of ice that move slowly downhill.")
    return path


def test_json_files_and_zips_go_through_the_bucket_and_are_answered(s3: S3Stack, tmp_path: Path) -> None:
    docs = [{"id": "moon", "text": "The Moon's pull raises the ocean tides twice a day."}]
    as_json = s3.api.run("/api/v1/documents", json={"collection": "s3-docs", "documents": docs})
    assert as_json["state"] == "succeeded" and as_json["result"]["succeeded"] == 1, as_json
    keys = s3.keys(as_json["job_id"])
    assert f"{as_json['job_id']}/documents.jsonl" in keys
    assert any("/batches/" in key for key in keys), keys  # the parse worker's, for the ingest worker

    (tmp_path / "espresso.txt").write_text("Espresso is coffee brewed by forcing hot water through beans.")
    files = [
        ("files", ("espresso.txt", (tmp_path / "espresso.txt").read_bytes())),
        ("files", ("more.zip", _zip(tmp_path / "more.zip").read_bytes())),
    ]
    as_files = s3.api.run("/api/v1/documents", data={"collection": "s3-docs"}, files=files)
    assert as_files["state"] == "succeeded" and as_files["result"]["succeeded"] == 3, as_files

    answer = s3.api.run("/api/v1/ask", json={"question": "what is lava?", "collection": "s3-docs"})
    assert answer["result"]["passages"][0]["doc_id"] == "more.zip/volcano.txt"
    for name, host in s3.hosts.items():
        assert not (host / "uploads").exists(), name  # nothing in the local upload directory
        assert files_left(host) == [], (name, files_left(host))


def test_a_retry_reads_the_upload_back_from_the_bucket(s3: S3Stack, tmp_path: Path) -> None:
    files = [
        ("files", ("broken.pdf", b"%PDF-1.7\nnot a PDF body\n")),
        ("files", ("owls.txt", b"Owls hunt at night with silent feathers.")),
    ]
    first = s3.api.run("/api/v1/documents", data={"collection": "s3-docs"}, files=files)
    assert first["result"]["failed"] == 1 and first["result"]["succeeded"] == 1, first
    retried = s3.api.post(f"/api/v1/jobs/{first['job_id']}/retry")
    assert retried.status_code == 202, retried.text
    again = s3.api.wait_job(retried.json()["job_id"])
    assert again["progress"]["total"] == 1 and again["progress"]["failed"] == 1, again
    failed = s3.api.get(f"/api/v1/jobs/{again['job_id']}/documents").json()["items"]
    assert [(d["doc_id"], d["status"]) for d in failed] == [("broken.pdf", "failed")]


def test_retention_deletes_an_upload_from_the_bucket(s3: S3Stack) -> None:
    docs = [{"id": f"gone-{uuid.uuid4().hex[:6]}", "text": "Kept only for its retention."}]
    job = s3.api.run("/api/v1/documents", json={"collection": "s3-docs", "documents": docs})
    assert s3.keys(job["job_id"]), "the upload is in the bucket while its retention runs"
    wait_until(lambda: not s3.keys(job["job_id"]), RETENTION_S + 30, "the upload deleted from the bucket")


def test_a_store_that_is_down_is_a_503_at_submit_and_no_job(s3: S3Stack) -> None:
    before = len(s3.api.get("/api/v1/jobs", params={"limit": 100}).json()["items"])
    s3.moto.terminate()
    s3.moto.wait(10)
    try:
        refused = s3.api.post(
            "/api/v1/documents", json={"collection": "s3-docs", "documents": [{"text": "x"}]}
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "upload store" in refused.json()["detail"]
        assert len(s3.api.get("/api/v1/jobs", params={"limit": 100}).json()["items"]) == before
        assert files_left(s3.hosts["api"]) == []  # the staged copy went with the refusal
    finally:
        s3.moto = _moto(s3.s3_port, s3.log)  # a fresh, empty stand-in: the bucket is created again on use
    again = s3.api.run(
        "/api/v1/documents", json={"collection": "s3-docs", "documents": [{"text": "back again"}]}
    )
    assert again["state"] == "succeeded", again
