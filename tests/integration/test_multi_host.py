"""Every tier on a host of its own (Linux network namespaces, `tests/integration/hosts.py`).

Hosts: `redis`, `milvus` (milvus-lite server), `s3` (moto's standalone server, the S3 stand-in), `api`
(gunicorn), two worker hosts `w1` and `w2` (parse, ingest and webhook workers each), `ask` (the ask worker)
and `client` (this test's requests and its webhook receiver). Each host reaches the others only over the
test's bridge, by address; each has a data directory of its own and none is shared (uploads and batch files
go through the bucket). Settings are the README's scaling section: REDIS_URL, MILVUS_URI, the object store
and, on model workers, the model. Across hosts: ingest (JSON, multipart, zip), ask, cancel, retry of failed
documents, delete, webhooks and metrics; and `w1` lost at once (every process SIGKILLed mid-job) hands its
work to `w2`, the job ending with exactly one copy of every chunk, long before the broker's visibility
timeout would have given the messages back.

Skipped, with the reason, where network namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from common.settings import Settings
from devstack.milvus_lite import server_argv
from devstack.processes import Supervisor, api_argv, service_workers, wait_until
from tests.integration.conftest import API_KEYS, WEBHOOK_ENV, Stack
from tests.integration.faultstack import documents, wait_for
from tests.integration.hosts import Host, Hosts, unavailable
from tests.integration.test_s3_uploads import files_left
from tests.integration.test_webhooks import Receiver, check_signed, delivery

pytestmark = pytest.mark.integration
BUCKET = "quarry-uploads"
MILVUS_COLLECTION = "quarry_hosts"
HEARTBEAT_TIMEOUT_S = 8  # a lost host's work moves on within about this


@dataclass(kw_only=True)
class Cluster(Stack):
    hosts: Hosts
    on_client: Callable[..., Any]  # runs a function on the client host
    dirs: dict[str, Path]  # each host's data directory
    sups: dict[str, Supervisor] = field(default_factory=dict)  # each host's processes

    def request(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> requests.Response:
        """From the client host: the API is reachable only over the test's network."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        call = requests.request
        return self.on_client(call, method, self.url + path, headers=headers, timeout=timeout, **kwargs)  # type: ignore[no-any-return]

    def on_host(self, name: str, argv: list[str]) -> list[str]:
        """`argv` on host `name`, which sees its own data directory and none of the others'."""
        others = [path for other, path in self.dirs.items() if other != name]
        return self.hosts.argv(self.hosts.hosts[name], argv, hide=others)

    def listing(self, name: str, path: Path) -> list[str]:
        """What host `name` sees in `path`."""
        out = subprocess.run(
            self.on_host(name, ["ls", "-A", str(path)]), capture_output=True, text=True, check=True
        )
        return out.stdout.split()

    def redis(self) -> redis.Redis:
        return self.on_client(redis.Redis.from_url, self.redis_url, decode_responses=True)  # type: ignore[no-any-return]

    def on_redis(self, fn: Callable[[redis.Redis], Any]) -> Any:
        """`fn` with a client of the Redis host, called on the client host (its socket is opened there)."""
        return self.on_client(lambda: fn(redis.Redis.from_url(self.redis_url, decode_responses=True)))

    def rows(self, collection: str) -> list[dict[str, Any]]:
        """Straight from Milvus, asked from the client host (gRPC opens its sockets on threads of its own,
        so a process of that host asks): every chunk row of `collection`."""
        code = (
            "import json, sys\n"
            "from store.connection import connect\n"
            "client = connect(sys.argv[1], timeout_s=10)\n"
            "rows = client.query(sys.argv[2], filter=f'collection == \"{sys.argv[3]}\"',\n"
            "    output_fields=['pk', 'doc_id', 'chunk_index'], limit=16384, consistency_level='Strong')\n"
            "print(json.dumps([{k: r[k] for k in ('pk', 'doc_id', 'chunk_index')} for r in rows]))\n"
        )
        argv = [sys.executable, "-c", code, self.env["MILVUS_URI"], MILVUS_COLLECTION, collection]
        out = subprocess.run(
            self.on_host("client", argv), capture_output=True, text=True, check=True, timeout=60
        )
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _env(hosts: dict[str, Host]) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": f"redis://{hosts['redis'].ip}:6379/0",
        "MILVUS_URI": f"http://{hosts['milvus'].ip}:19530",
        "MILVUS_COLLECTION": MILVUS_COLLECTION,
        "UPLOAD_STORE": "s3",
        "S3_ENDPOINT_URL": f"http://{hosts['s3'].ip}:9000",
        "S3_BUCKET": BUCKET,
        "S3_ACCESS_KEY_ID": "test",
        "S3_SECRET_ACCESS_KEY": "test",
        "API_KEYS": json.dumps(API_KEYS),
        **WEBHOOK_ENV,
        "WEBHOOK_ALLOWED_NETWORKS": json.dumps([f"{hosts['client'].ip}/32"]),
        # Small batches that pause mid-write: a job spans both worker hosts, and a kill lands mid-batch.
        "INGEST_BATCH_DOCUMENTS": "4",
        "TEST_BATCH_DELAY_S": "1",
        "JOB_HEARTBEAT_INTERVAL_S": "0.5",
        "JOB_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _start(cluster: Cluster, name: str, argv: list[str], proc_name: str) -> Any:
    if name not in cluster.sups:
        env = {**cluster.env, "DATA_DIR": str(cluster.dirs[name])}
        cluster.sups[name] = Supervisor(env=env, log_dir=cluster.logs / name)
    return cluster.sups[name].start(proc_name, cluster.on_host(name, argv))


def _answers(call: Callable[..., Any], url: str) -> bool:
    try:
        return bool(call(requests.get, url, timeout=2).status_code < 500)
    except requests.RequestException:
        return False


def _start_servers(cluster: Cluster) -> None:
    hosts, call = cluster.hosts.hosts, cluster.on_client
    redis_ip, milvus_ip, s3_ip = hosts["redis"].ip, hosts["milvus"].ip, hosts["s3"].ip
    server = ["redis-server", "--bind", redis_ip, "--port", "6379", "--save", "", "--appendonly", "no"]
    proc = _start(cluster, "redis", [*server, "--protected-mode", "no"], "redis")
    wait_until(lambda: _pings(call, cluster.redis_url), 30, "Redis on its host", proc)
    proc = _start(cluster, "milvus", server_argv(cluster.dirs["milvus"] / "db", milvus_ip, 19530), "milvus")
    moto = _start(cluster, "s3", [sys.executable, "-m", "moto.server", "-H", s3_ip, "-p", "9000"], "moto")
    wait_until(lambda: _answers(call, f"http://{s3_ip}:9000"), 60, "the S3 stand-in on its host", moto)
    assert proc.poll() is None, "milvus-lite exited"  # its readiness is the API's, waited for below


def _pings(call: Callable[..., Any], url: str) -> bool:
    try:
        return bool(call(lambda: redis.Redis.from_url(url, socket_connect_timeout=1).ping()))
    except redis.RedisError:
        return False


def _start_service(cluster: Cluster) -> None:
    workers = [
        (n, argv) for n, argv in service_workers(Settings(), ask_threads=4, webhooks=2) if n != "ask-worker"
    ]
    for host in ("w1", "w2"):
        for proc_name, argv in workers:
            _start(cluster, host, argv, proc_name)
    ask = dict(service_workers(Settings(), ask_threads=4))["ask-worker"]
    _start(cluster, "ask", ask, "ask-worker")
    api = _start(cluster, "api", api_argv(cluster.hosts.hosts["api"].ip, 8000), "api")
    wait_until(lambda: _ready(cluster), 240, "the API and a warm worker per queue, across hosts", api)


def _ready(cluster: Cluster) -> bool:
    try:
        return cluster.get("/readyz").status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = unavailable()
    if reason:
        pytest.skip(f"no hosts of its own can be made here: {reason}")
    tmp = tmp_path_factory.mktemp("hosts")
    hosts = Hosts()
    made: Cluster | None = None
    try:
        for name in ("redis", "milvus", "s3", "api", "w1", "w2", "ask", "client"):
            hosts.add(name)
        env = _env(hosts.hosts)
        made = Cluster(
            url=f"http://{hosts.hosts['api'].ip}:8000",
            redis_url=env["REDIS_URL"],
            logs=tmp / "logs",
            env=env,
            hosts=hosts,
            on_client=hosts.thread_in(hosts.hosts["client"]),
            dirs={name: tmp / name for name in hosts.hosts},
        )
        for path in made.dirs.values():
            path.mkdir()
        _start_servers(made)
        _start_service(made)
        yield made
    finally:
        for sup in reversed(list(made.sups.values()) if made else []):
            sup.stop()
        hosts.close()


def _bucket_keys(cluster: Cluster, prefix: str) -> list[str]:
    def listed() -> list[str]:
        s3 = boto3.client(
            "s3",
            endpoint_url=cluster.env["S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        return sorted(
            item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        )

    return cluster.on_client(listed)  # type: ignore[no-any-return]


def _zip(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("volcano.txt", "Volcanoes erupt molten rock called lava from the mantle.")
        archive.writestr("glaciers.md", "# Glaciers\n\nGlaciers are rivers of ice that move slowly downhill.")
    return path.read_bytes()


def test_json_files_and_a_zip_are_ingested_and_asked_across_hosts(cluster: Cluster, tmp_path: Path) -> None:
    docs = [{"id": "moon", "text": "The Moon's pull raises the ocean tides twice a day."}, *documents("n", 7)]
    as_json = cluster.run("/api/v1/documents", json={"collection": "hosts", "documents": docs})
    assert as_json["state"] == "succeeded" and as_json["result"]["succeeded"] == 8, as_json
    keys = _bucket_keys(cluster, as_json["job_id"])
    assert f"{as_json['job_id']}/documents.jsonl" in keys and any("/batches/" in key for key in keys), keys

    files = [
        ("files", ("espresso.txt", b"Espresso is coffee brewed by forcing hot water through beans.")),
        ("files", ("more.zip", _zip(tmp_path / "more.zip"))),
    ]
    as_files = cluster.run("/api/v1/documents", data={"collection": "hosts"}, files=files)
    assert as_files["state"] == "succeeded" and as_files["result"]["succeeded"] == 3, as_files

    answer = cluster.run("/api/v1/ask", json={"question": "what is lava?", "collection": "hosts"})
    assert answer["result"]["passages"][0]["doc_id"] == "more.zip/volcano.txt", answer
    for name in ("api", "w1", "w2", "ask"):  # uploads and batch files went through the bucket only
        assert files_left(cluster.dirs[name]) == [], (name, files_left(cluster.dirs[name]))
    assert cluster.listing("api", cluster.dirs["api"])  # its own directory holds its metrics files ...
    assert cluster.listing("w1", cluster.dirs["api"]) == []  # ... which no other host can see


def test_cancel_retry_and_delete_work_across_hosts(cluster: Cluster) -> None:
    response = cluster.post(
        "/api/v1/documents", json={"collection": "hosts-cancel", "documents": documents("c", 40)}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    wait_for(
        lambda: cluster.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running", 60, "the job to start"
    )
    assert cluster.delete(f"/api/v1/jobs/{job_id}").status_code in (200, 202)
    cancelled = cluster.wait_job(job_id)
    assert cancelled["state"] == "cancelled", cancelled
    assert len({row["doc_id"] for row in cluster.rows("hosts-cancel")}) < 40  # stopped before the end

    files = [
        ("files", ("broken.pdf", b"%PDF-1.7\nnot a PDF body\n")),
        ("files", ("owls.txt", b"Owls hunt at night with silent feathers.")),
    ]
    first = cluster.run("/api/v1/documents", data={"collection": "hosts-edit"}, files=files)
    assert first["result"]["failed"] == 1 and first["result"]["succeeded"] == 1, first
    retried = cluster.post(f"/api/v1/jobs/{first['job_id']}/retry")
    assert retried.status_code == 202, retried.text
    again = cluster.wait_job(retried.json()["job_id"])
    assert again["progress"]["total"] == 1 and again["progress"]["failed"] == 1, again  # read from the bucket
    report = cluster.get(f"/api/v1/jobs/{again['job_id']}/documents").json()["items"]
    assert [(item["doc_id"], item["status"]) for item in report] == [("broken.pdf", "failed")]

    deleted = cluster.delete("/api/v1/collections/hosts-edit/documents/owls.txt")
    assert deleted.status_code == 202, deleted.text
    assert cluster.wait_job(deleted.json()["job_id"])["state"] == "succeeded"
    assert cluster.get("/api/v1/collections/hosts-edit/documents/owls.txt").status_code == 404
    assert cluster.rows("hosts-edit") == []
    answer = cluster.run("/api/v1/ask", json={"question": "how do owls hunt?", "collection": "hosts-edit"})
    assert answer["state"] == "succeeded" and answer["result"]["passages"] == [], answer


def test_webhooks_reach_a_receiver_on_another_host(cluster: Cluster) -> None:
    receiver: Receiver = cluster.on_client(Receiver, cluster.hosts.hosts["client"].ip)
    try:
        url = receiver.url()
        body = {"collection": "hosts-hooks", "documents": documents("h", 2), "callback_url": url}
        response = cluster.post("/api/v1/documents", json=body)
        assert response.status_code == 202, response.text
        job = delivery(cluster, response.json()["job_id"])
        assert job["callback"]["state"] == "delivered", job
        [post] = receiver.posts(url)
        body = check_signed(post, job["job_id"])  # signed, from the worker host, to the client host
        assert body["job"]["state"] == "succeeded" and body["job"]["result"]["succeeded"] == 2, body
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_metrics_count_the_work_of_every_host(cluster: Cluster) -> None:
    """Workers on other hosts write their counts to Redis; the API's one scrape holds them all."""
    text = cluster.get("/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("quarry_tasks_total", kind="ingest_batch", outcome="succeeded") >= 3  # w1 and w2
    assert value("quarry_tasks_total", kind="ask", outcome="succeeded") >= 2  # the ask host
    assert value("quarry_stage_duration_seconds_count", pipeline="ingest", stage="embed") >= 3
    assert value("quarry_stage_duration_seconds_count", pipeline="ask", stage="search") >= 1
    assert value("quarry_jobs_ended_total", kind="ingest", state="succeeded") >= 3
    assert value("quarry_jobs_ended_total", kind="ingest", state="cancelled") >= 1


def _beats_from(cluster: Cluster, job_id: str, host: str) -> dict[str, dict[str, Any]]:
    """The job's running tasks whose heartbeats come from `host` (task id -> beat)."""
    raw = cluster.on_redis(lambda r: r.hgetall(f"quarry:job:{job_id}"))
    beats = {k.removeprefix("beat:"): json.loads(v) for k, v in raw.items() if k.startswith("beat:")}
    return {task: beat for task, beat in beats.items() if beat.get("host") == host}


def test_a_worker_host_lost_mid_job_hands_its_work_to_the_other_host(cluster: Cluster) -> None:
    """Last in this module: `w1` stays dead. Every process of `w1` (its parse, ingest and webhook workers)
    SIGKILLed while it runs batches of a job: its messages wait unacknowledged in Redis, their heartbeats go
    stale, and `w2`'s sweeper hands them back to the queue; `w2` runs them and the job ends with exactly the
    chunks of a clean run, each once. The broker's own visibility timeout (2,500 s, the default) plays no
    part."""
    docs = documents("k", 24)  # six batches of four, each pausing 1 s mid-write
    clean = cluster.run("/api/v1/documents", json={"collection": "hosts-clean", "documents": docs})
    assert clean["state"] == "succeeded" and clean["result"]["succeeded"] == 24, clean

    response = cluster.post("/api/v1/documents", json={"collection": "hosts-kill", "documents": docs})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    wait_for(lambda: set(_beats_from(cluster, job_id, "w1")) - {job_id}, 90, "w1 to run a batch of the job")
    assert cluster.hosts.kill(cluster.hosts.hosts["w1"])
    killed_at = time.monotonic()
    # What w1 held at the kill: the beats its dead processes left (a task that ended clears its own). Read
    # after the kill, not before: a task seen running then may have ended in between (the coordinator did).
    held = set(_beats_from(cluster, job_id, "w1"))
    assert held - {job_id}, "no batch of the job was running on w1 when it was killed"

    job = cluster.wait_job(job_id, timeout_s=180)
    ended_after_s = time.monotonic() - killed_at
    assert job["state"] == "succeeded" and job["result"]["failed"] == 0, job
    assert job["result"]["succeeded"] + job["result"]["skipped"] == 24
    deliveries = cluster.on_redis(lambda r: r.hgetall(f"quarry:job:{job_id}:deliveries"))
    for task in held:  # each batch w1 held ran again on w2, once
        assert deliveries[f"{task}:0"] == "2", (task, deliveries)
    assert all(int(count) <= 2 for count in deliveries.values()), deliveries
    assert ended_after_s < 120, ended_after_s

    rows, clean_rows = cluster.rows("hosts-kill"), cluster.rows("hosts-clean")
    assert len(rows) == len({row["pk"] for row in rows}) == len(clean_rows)
    chunks = sorted((row["doc_id"], row["chunk_index"]) for row in rows)
    assert chunks == sorted((row["doc_id"], row["chunk_index"]) for row in clean_rows)
    assert {doc_id for doc_id, _ in chunks} == {doc["id"] for doc in docs}
