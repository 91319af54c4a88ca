"""devstack.milvus_lite: the registry methods of milvus-lite's database class run one at a time."""

from __future__ import annotations

import threading
from typing import Any

from devstack.milvus_lite import REGISTRY_METHODS, lock_registry, server_argv


class Registry:
    """Stands in for milvus_lite.db.MilvusLite: get_collection blocks until told to go on."""

    def __init__(self) -> None:
        self.inside, self.entered, self.go = 0, threading.Event(), threading.Event()
        self.most_inside, self.both_inside = 0, threading.Event()

    def get_collection(self, name: str) -> str:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        if self.inside == 2:
            self.both_inside.set()
        self.entered.set()
        self.go.wait(10)
        self.inside -= 1
        return name


for _name in REGISTRY_METHODS:
    if _name != "get_collection":
        setattr(Registry, _name, lambda self, *args, **kwargs: (args, kwargs))


def test_two_first_opens_of_a_collection_run_one_after_the_other() -> None:
    lock_registry(Registry)
    registry, results = Registry(), []

    def open_it() -> None:
        results.append(registry.get_collection("quarry_chunks"))

    first = threading.Thread(target=open_it)
    first.start()
    assert registry.entered.wait(10)
    second = threading.Thread(target=open_it)
    second.start()
    assert not registry.both_inside.wait(0.5)  # without the lock the second is inside at once
    registry.go.set()
    first.join(10)
    second.join(10)
    assert results == ["quarry_chunks", "quarry_chunks"]
    assert registry.most_inside == 1  # the second waited outside while the first was opening


def test_every_registry_method_is_wrapped_once_and_keeps_its_name() -> None:
    lock_registry(Registry)
    wrapped = Registry.get_collection
    lock_registry(Registry)  # a second call (a re-import) wraps nothing again
    assert Registry.get_collection is wrapped
    for name in REGISTRY_METHODS:
        method: Any = getattr(Registry, name)
        assert method.registry_locked


def test_the_server_is_started_through_the_locking_module() -> None:
    argv = server_argv("/data/milvus", "127.0.0.1", 19530)
    assert argv[1:4] == ["-m", "devstack.milvus_lite", "server"]
    assert argv[4:] == ["--data-dir", "/data/milvus", "--host", "127.0.0.1", "--port", "19530"]
