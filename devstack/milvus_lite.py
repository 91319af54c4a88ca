"""The embedded Milvus of `make run` and the tests: milvus-lite's server, with its collection registry locked.

milvus-lite 3.2 opens a collection on the first request that names it (WAL replay, segments, indexes), in
one of its ten request threads, without a lock. After a (re)start, concurrent first requests each open an
instance of their own and the registry keeps the last: a write that went through another one is
acknowledged, but no read sees it, and it is lost once the kept instance writes and flushes its WAL.
Measured: one upsert sent together with seven queries right after a restart was invisible in 8 rounds of 8;
alone, it never was. Workers reconnecting after a Milvus restart send exactly such bursts.

Run as `python -m devstack.milvus_lite server --data-dir D --host H --port P` (milvus-lite's own command
line): every method that opens, creates, drops, renames or restores collections holds one lock, so the
first request opens the collection and the others find it open. Milvus standalone and cluster, which
Compose and Helm run, are other code. `tests/integration/test_milvus_lite_open.py` shows both behaviours.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The methods of milvus_lite.db.MilvusLite that read or change its registry of open collections.
REGISTRY_METHODS = (
    "create_collection",
    "get_collection",
    "drop_collection",
    "rename_collection",
    "restore_snapshot",
    "truncate_collection",
    "drop_database",
    "close",
)


def server_args(data_dir: Path | str, host: str, port: int) -> list[str]:
    """milvus-lite's command-line arguments for a server (this module's and milvus-lite's own command)."""
    return ["server", "--data-dir", str(data_dir), "--host", host, "--port", str(port)]


def server_argv(data_dir: Path | str, host: str, port: int) -> list[str]:
    """The command that starts the embedded server with the registry locked."""
    return [sys.executable, "-m", "devstack.milvus_lite", *server_args(data_dir, host, port)]


def lock_registry(cls: Any = None) -> None:
    """Wrap each of `REGISTRY_METHODS` of `cls` (milvus-lite's database class) in one re-entrant lock."""
    if cls is None:
        from milvus_lite.db import MilvusLite  # noqa: PLC0415 - milvus-lite: only in the server's process

        cls = MilvusLite
    lock = threading.RLock()
    for name in REGISTRY_METHODS:
        original = getattr(cls, name)
        if not getattr(original, "registry_locked", False):
            setattr(cls, name, _locked(original, lock))


def _locked(method: Callable[..., Any], lock: threading.RLock) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    call.registry_locked = True  # type: ignore[attr-defined]
    return call


def main() -> int:
    lock_registry()
    from milvus_lite.cmdline import main as milvus_lite_main  # noqa: PLC0415 - after the lock is in place

    return int(milvus_lite_main(sys.argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
