"""Which worker runs where (`make run` and the test stacks start the same set), and who gets reniced."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import contracts
from common.settings import Settings
from devstack.processes import gpu_expected, service_workers
from workers import gate
from workers.gate import DeviceGate, NoGate, core_sharers, gate_for, renice, share_cores


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_every_routed_queue_has_a_worker_and_models_stay_off_the_parse_worker() -> None:
    workers = dict(service_workers(Settings()))
    queues = {name: _flag(argv, "-Q") for name, argv in workers.items()}
    assert queues == {
        "parse-worker": contracts.PARSE_QUEUE,
        "ingest-worker": contracts.INGEST_QUEUE,
        "ask-worker-0": contracts.ASK_QUEUE,
        "webhook-worker": contracts.WEBHOOK_QUEUE,
    }
    assert set(contracts.TASK_QUEUES.values()) == set(queues.values())
    # Prefork for the ingest worker (hard time limits, a killed batch redelivered at once), threads for
    # the ask worker (one model, one micro-batcher).
    assert "-P" not in workers["ingest-worker"] and _flag(workers["ask-worker-0"], "-P") == "threads"


def test_test_stacks_name_their_one_ask_worker_as_they_address_it() -> None:
    workers = dict(service_workers(Settings(), ask_threads=8, webhooks=4))
    assert _flag(workers["ask-worker"], "-c") == "8" and _flag(workers["webhook-worker"], "-c") == "4"


@pytest.mark.parametrize(
    ("consumes", "reniced"),
    [({"ingest"}, True), ({"ingest", "ask"}, False), ({"ask"}, False), ({"parse"}, False)],
)
def test_only_an_ingest_only_worker_lowers_its_priority(
    monkeypatch: pytest.MonkeyPatch, consumes: set[str], reniced: bool
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(gate.os, "nice", calls.append)
    assert renice(Settings(), consumes) is reniced
    assert calls == ([10] if reniced else [])
    assert renice(Settings(ingest_nice=0), consumes) is False  # the earlier design: no renice


def test_the_gate_follows_its_setting(tmp_path: object) -> None:
    settings = Settings(data_dir=tmp_path)  # type: ignore[arg-type]
    on = gate_for(settings)
    assert isinstance(on, DeviceGate) and on.path == settings.data_dir / "gate" / "device.lock"
    assert isinstance(gate_for(Settings(question_gate=False)), NoGate)


@pytest.mark.parametrize(("device", "processes"), [("cpu", "2"), ("cuda", "1")])
def test_the_ingest_worker_runs_two_processes_on_a_cpu_and_one_on_a_gpu(device: str, processes: str) -> None:
    workers = dict(service_workers(Settings(device=device)))  # type: ignore[arg-type]
    assert _flag(workers["ingest-worker"], "-c") == processes
    assert _flag(dict(service_workers(Settings(ingest_concurrency=3)))["ingest-worker"], "-c") == "3"


def test_auto_expects_a_gpu_where_the_nvidia_driver_lists_one(tmp_path: Path) -> None:
    gpus = tmp_path / "gpus"
    assert not gpu_expected(Settings(device="auto"), gpus)  # no driver
    gpus.mkdir()
    assert not gpu_expected(Settings(device="auto"), gpus)  # a driver, no GPU
    (gpus / "0000:01:00.0").mkdir()
    assert gpu_expected(Settings(device="auto"), gpus) and not gpu_expected(Settings(device="cpu"), gpus)


@pytest.mark.parametrize(
    ("consumes", "sharers"), [({"ingest"}, 2), ({"ingest", "ask"}, 1), ({"ask"}, 1), ({"parse"}, 1)]
)
def test_only_an_ingest_only_workers_children_share_the_cores(
    monkeypatch: pytest.MonkeyPatch, consumes: set[str], sharers: int
) -> None:
    monkeypatch.setattr(gate, "_sharers", 1)
    assert share_cores(consumes, 2) == sharers == core_sharers()
