"""Keepalive against a real milvus-lite server: pymilvus's own pinging draws GOAWAY `too_many_pings`, and a
Quarry client (store.connection) keeps answering through such GOAWAYs.

Each client runs in a process of its own, so gRPC's log of that process (its stderr) is the client's alone.
pymilvus pings every 10 s with or without calls, which the server punishes after about 3 minutes of quiet; the
clients here ping every second (and gRPC's own throttle of pings without data is off) to see it in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymilvus import DataType
from pymilvus.client import entity_helper
from pymilvus.exceptions import MilvusException

from devstack.processes import Supervisor, free_port, start_milvus
from store.connection import connect

GOAWAY = 'Received a GOAWAY with error code ENHANCE_YOUR_CALM and debug data equal to "too_many_pings"'
PYMILVUS_POLICY = {"grpc.keepalive_time_ms": 10_000, "grpc.keepalive_permit_without_calls": 1}
FAST = {"grpc.keepalive_time_ms": 1000, "grpc.http2.max_pings_without_data": 0}
ROUNDS = 3
# A client process: `pymilvus` (a plain dedicated MilvusClient) or `quarry…` (store.connection.connect) with
# the given options; writes and reads a row per round, quiet for seconds in between; prints what it read.
CLIENT = """
import json, sys, time
from pymilvus import MilvusClient
from store.connection import connect
uri, kind, options, rounds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
if kind.startswith("quarry"):
    client = connect(uri, timeout_s=10, grpc_options=options)
else:
    client = MilvusClient(uri=uri, timeout=10, dedicated=True, grpc_options=options)
name = "keepalive_" + kind
if client.has_collection(name):
    client.drop_collection(name)
client.create_collection(name, dimension=4, id_type="int")
read = []
for i in range(rounds):
    time.sleep(4.5)  # quiet: the pings of a connection without calls
    client.upsert(name, [{"id": i, "vector": [0.1, 0.2, 0.3, float(i)]}])
    read.append(len(client.query(name, filter="id >= 0", output_fields=["id"], consistency_level="Strong")))
print(json.dumps(read), flush=True)
"""


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("keepalive")
    sup = Supervisor(env={}, log_dir=tmp / "logs")
    uri = f"http://127.0.0.1:{free_port()}"
    try:
        start_milvus(sup, uri, tmp / "milvus")
        yield uri
    finally:
        sup.stop()


def run_client(
    tmp: Path, uri: str, kind: str, options: dict[str, int], *, until_goaway: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a client process; with `until_goaway`, return once its log shows the GOAWAY (or it ended)."""
    log = tmp / f"{kind}.log"
    argv = [sys.executable, "-c", CLIENT, uri, kind, json.dumps(options), str(ROUNDS)]
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 20
    while (
        until_goaway and GOAWAY not in log.read_text() and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    return proc, log


def test_pymilvus_pinging_without_calls_draws_goaway_too_many_pings(milvus_uri: str, tmp_path: Path) -> None:
    proc, log = run_client(tmp_path, milvus_uri, "pymilvus", {**PYMILVUS_POLICY, **FAST}, until_goaway=True)
    proc.kill()
    proc.wait()
    assert GOAWAY in log.read_text()


def test_quarry_clients_answer_through_goaways_and_draw_none_themselves(
    milvus_uri: str, tmp_path: Path
) -> None:
    # One made to ping like pymilvus (fast): the server sends it GOAWAYs, and still no call fails. One with
    # Quarry's keepalive policy at the same fast pace, beside it: a quiet connection is never pinged, so the
    # same quiet spells draw no GOAWAY (store.connection.GRPC_OPTIONS: keepalive_permit_without_calls 0).
    pinging = run_client(tmp_path, milvus_uri, "quarry", {**PYMILVUS_POLICY, **FAST})
    own = run_client(tmp_path, milvus_uri, "quarry-own", FAST)
    for (proc, log), goaway in ((pinging, True), (own, False)):
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert json.loads(out) == list(range(1, ROUNDS + 1))
        assert (GOAWAY in log.read_text()) is goaway


def test_without_pymilvus_row_string_walk_the_server_still_refuses_an_over_long_value(
    milvus_uri: str,
) -> None:
    """`connect` turns off pymilvus's per-character walk of row strings (`skip_row_string_walk`): a value
    over its field's max_length is still refused, by the server, and one within it is stored whole."""
    client = connect(milvus_uri)
    assert entity_helper.CHECK_STR_ARRAY is False
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=10)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="L2")
    client.create_collection("row_strings", schema=schema, index_params=index)
    with pytest.raises(MilvusException, match="max_length"):
        client.upsert("row_strings", [{"id": 1, "text": "x" * 11, "v": [0.1, 0.2]}])
    client.upsert("row_strings", [{"id": 2, "text": "y" * 10, "v": [0.1, 0.2]}])
    rows = client.query("row_strings", filter="id >= 0", output_fields=["text"], consistency_level="Strong")
    assert [row["text"] for row in rows] == ["y" * 10]
