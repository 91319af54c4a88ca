"""The embedded Milvus right after a restart, on real milvus-lite servers: a write sent together with reads,
the first requests to name the collection, is kept and seen (`devstack.milvus_lite` locks the server's
registry of open collections). The same burst on milvus-lite's own command loses the write from sight: that
part fails once milvus-lite opens collections under a lock of its own, and the workaround can go.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from common.settings import Settings
from common.types import Chunk
from devstack.milvus_lite import server_args, server_argv
from devstack.processes import Supervisor, free_port, milvus_ready, wait_until
from store.connection import connect
from store.milvus import MilvusStore

READERS = 7  # with one writer: ten request threads serve them, so all eight open the collection at once
ROUNDS = 4
Argv = Callable[[Path, str, int], list[str]]


def plain_argv(data_dir: Path, host: str, port: int) -> list[str]:
    """milvus-lite's own command, without the lock."""
    return [str(Path(sys.executable).with_name("milvus-lite")), *server_args(data_dir, host, port)]


@contextmanager
def server(tmp: Path, argv: Argv) -> Iterator[tuple[str, Callable[[], None]]]:
    """A milvus-lite server on a free port holding a flushed collection: its URI and its restart (SIGKILL)."""
    port, sup = free_port(), Supervisor(env={}, log_dir=tmp / "logs")
    uri = f"http://127.0.0.1:{port}"

    def start() -> None:
        proc = sup.start("milvus", argv(tmp / "data", "127.0.0.1", port))
        wait_until(lambda: milvus_ready(uri), 60, "milvus-lite", proc)

    def restart() -> None:
        sup.procs[-1][1].send_signal(signal.SIGKILL)
        sup.procs[-1][1].wait(30)
        start()

    start()
    try:
        seed = store(uri)
        seed.ensure_collection("m", 4)
        for i in range(4):  # a few segments, so that opening the collection takes a while
            write(seed, f"seed-{i}", 10)
            seed.flush()
        seed.client.close()
        yield uri, restart
    finally:
        sup.stop()


def store(uri: str) -> MilvusStore:
    result = MilvusStore(Settings(milvus_uri=uri))
    result._analysis = "standard"  # read at creation otherwise: the burst's requests must be its first
    return result


def write(target: MilvusStore, collection: str, chunks: int) -> None:
    rows = [Chunk("d", i, f"{collection} chunk {i}") for i in range(chunks)]
    vectors = np.random.default_rng(chunks).random((chunks, 4), dtype=np.float32)
    target.insert(collection, rows, vectors, {"d": "v1"})


def visible(uri: str, collection: str) -> int:
    """Rows of `collection` a new connection reads (loading the collection a restart left released)."""
    client = connect(uri, timeout_s=10)
    try:
        client.load_collection("quarry_chunks")
        expr = f'collection == "{collection}"'
        return len(client.query("quarry_chunks", filter=expr, output_fields=["pk"], limit=100))
    finally:
        client.close()


def burst(uri: str, collection: str) -> None:
    """One upsert of 5 rows and READERS queries, released together, each on a connection of its own."""
    stores = [store(uri) for _ in range(1 + READERS)]
    go = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(index: int) -> None:
        go.wait()
        try:
            if index == 0:
                write(stores[0], collection, 5)
            else:
                stores[index].client.query("quarry_chunks", filter='collection == "seed-0"', limit=1)
        except Exception as exc:  # a read may find the collection released: that is not what is checked
            if index == 0:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for each in stores:
        each.client.close()
    assert not errors, errors  # the write was acknowledged


def unseen_writes(tmp: Path, argv: Argv) -> list[int]:
    """For each round (a SIGKILL and restart, then a burst), how many of the write's 5 rows no one reads."""
    missing = []
    with server(tmp, argv) as (uri, restart):
        for round_ in range(ROUNDS):
            restart()
            burst(uri, f"round-{round_}")
            missing.append(5 - visible(uri, f"round-{round_}"))
    return missing


def test_a_write_among_the_first_requests_after_a_restart_is_kept(tmp_path: Path) -> None:
    assert unseen_writes(tmp_path, server_argv) == [0] * ROUNDS


def test_milvus_lite_alone_loses_such_a_write_from_sight(tmp_path: Path) -> None:
    """Why the lock: without it the acknowledged rows are missing (measured in every round of 8)."""
    missing = unseen_writes(tmp_path, plain_argv)
    assert any(missing), f"milvus-lite kept every write {missing}: it may lock its registry itself now"
