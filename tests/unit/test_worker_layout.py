"""Which worker runs where (`make run` and the test stacks start the same set), and who gets reniced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common import contracts
from common.settings import Settings
from devstack.processes import gpu_expected, service_workers
from workers import device, gate
from workers.gate import (
    DeviceGate,
    NoGate,
    bulk_share,
    core_sharers,
    gate_for,
    renice,
    renice_session,
    share_cores,
)


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
    monkeypatch.setattr(gate, "renice_session", calls.append)  # this test process's session is not its own
    assert renice(Settings(), consumes) is reniced
    assert calls == ([10, 10] if reniced else [])
    assert renice(Settings(ingest_nice=0), consumes) is False  # the earlier design: no renice


def test_the_gate_follows_its_setting(tmp_path: object) -> None:
    settings = Settings(data_dir=tmp_path)  # type: ignore[arg-type]
    on = gate_for(settings)
    assert isinstance(on, DeviceGate) and on.path == settings.data_dir / "gate" / "device.lock"
    assert isinstance(gate_for(Settings(question_gate=False)), NoGate)


def test_bulk_keeps_half_of_a_period_on_a_cpu_a_tenth_on_a_gpu_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a CPU the niced ingest worker gets a tenth of the cores in its share; on a GPU, the device."""
    assert bulk_share(Settings(device="cpu")) == 0.5
    assert (
        isinstance(on := gate_for(Settings(device="cpu")), DeviceGate) and on.period_s == 20.0
    )  # 10 s / 0.5
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    assert bulk_share(Settings(device="cuda")) == 0.1
    assert bulk_share(Settings(device="cuda", question_gate_bulk_share=0)) == 0.0


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


@pytest.mark.parametrize("own_session", [True, False])
def test_a_worker_renices_its_sessions_autogroup_only_when_it_leads_the_session(
    tmp_path: Path, own_session: bool
) -> None:
    """A worker that shares its session (a shell's) must not lower its neighbours' priority with its own."""
    autogroup = tmp_path / "autogroup"
    code = (
        "from pathlib import Path; from workers.gate import renice_session; "
        f"print(renice_session(10, Path({str(autogroup)!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        start_new_session=own_session,
    )
    assert done.stdout.split() == [str(own_session)], done.stderr
    assert (autogroup.read_text() if own_session else None) == ("10" if own_session else None)
    assert renice_session(10, tmp_path / "missing" / "autogroup") is False  # no autogroups: nice alone
