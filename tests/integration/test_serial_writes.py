"""Writers in several processes, through `MilvusStore` with the write turn (`common.locks.SerialWrites`), on
the real milvus-lite server and Redis: no write, prune or delete is lost, none is refused.

Without the turn the same writers lose some (measured: three processes, 60 s each, about 3,400 calls: 11 read
back a deleted or a pruned version, 25 flushes were refused with "current_seq is monotonic"), because the
server runs requests on a thread pool and its engine takes no lock for writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import redis

from common.locks import DocumentLocks, SerialWrites
from common.settings import Settings
from common.types import Chunk
from store.milvus import MilvusStore
from tests.integration.conftest import Stack

WRITERS = 3
CALLS = 150  # write calls per writer: versions written, pruned and deleted
COLLECTION = "quarry_serial_writes"


def open_store(uri: str, redis_url: str) -> MilvusStore:
    settings = Settings(milvus_uri=uri, milvus_collection=COLLECTION, redis_url=redis_url)
    locks = DocumentLocks(redis.Redis.from_url(redis_url), ttl_s=30, wait_s=30)
    store = MilvusStore(settings, SerialWrites(locks, f"{uri}\x00{COLLECTION}", wait_s=30).turn)
    store.ensure_collection("m", 4)
    return store


def writer(uri: str, redis_url: str, name: str, go: str) -> None:
    """Write, replace (write then prune the old version) and delete this writer's own documents; after each,
    read the document back. Prints what it read wrong, the calls refused, and each document's last state."""
    store, rng = open_store(uri, redis_url), np.random.default_rng(int.from_bytes(name.encode(), "little"))
    wrong, refused, final = [], [], {}
    Path(f"{go}.{name}").touch()  # connected: ready to start
    while not Path(go).exists():
        time.sleep(0.01)
    for seq in range(1, CALLS + 1):
        doc = f"{name}-d{seq % 3}"
        try:
            if seq % 4 == 0:
                store.delete("c", [doc], before_seq=seq + 1)
                want: dict[str, int] = {}
            else:
                chunks = [Chunk(doc, i, f"{doc} v{seq} {i}") for i in range(3)]
                store.insert("c", chunks, rng.random((3, 4), dtype=np.float32), {doc: f"v{seq}"}, seq)
                store.flush()
                store.prune("c", {doc: {f"v{seq}"}})
                want = {f"v{seq}": seq}
            store.flush()
        except Exception as exc:
            refused.append(f"{doc} call {seq}: {exc}")
            continue
        final[doc] = want
        got = store.document_versions("c", [doc]).get(doc, {})
        if got != want:
            wrong.append(f"{doc} call {seq}: wanted {want}, read {got}")
    print(json.dumps({"wrong": wrong, "refused": refused, "final": final}), flush=True)


def test_writers_in_several_processes_taking_turns_lose_no_write(stack: Stack, tmp_path: Path) -> None:
    uri, redis_url = stack.env["MILVUS_URI"], stack.redis_url
    store = open_store(uri, redis_url)
    go = tmp_path / "go"
    root = Path(__file__).parents[2]
    code = "import sys; from tests.integration.test_serial_writes import writer; writer(*sys.argv[1:])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, redis_url, f"w{i}", str(go)],
            stdout=subprocess.PIPE,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        for i in range(WRITERS)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.w{i}").exists() for i in range(WRITERS)):  # all connected: start them at once
        assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs)
        time.sleep(0.05)
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        results.append(json.loads(out.splitlines()[-1]))
    assert [r["wrong"] for r in results] == [[]] * WRITERS
    assert [r["refused"] for r in results] == [[]] * WRITERS
    for result in results:  # and read afterwards, from here: each document as its last call left it
        for doc, want in result["final"].items():
            assert store.document_versions("c", [doc]).get(doc, {}) == want, doc
            assert store.count({"collection": "c", "doc_id": doc}) == (3 if want else 0), doc
