"""Which worker runs where (`make run` and the test stacks start the same set), and who gets reniced."""

from __future__ import annotations

import pytest

from common import contracts
from common.settings import Settings
from devstack.processes import service_workers
from workers import gate
from workers.gate import DeviceGate, NoGate, gate_for, renice


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_every_routed_queue_has_a_worker_and_models_stay_off_the_parse_worker() -> None:
    workers = dict(service_workers(Settings()))
    queues = {name: _flag(argv, "-Q") for name, argv in workers.items()}
    assert queues == {
        "parse-worker": contracts.PARSE_QUEUE,
        "ingest-worker": contracts.INGEST_QUEUE,
        "query-worker-0": contracts.QUERY_QUEUE,
        "webhook-worker": contracts.WEBHOOK_QUEUE,
    }
    assert set(contracts.TASK_QUEUES.values()) == set(queues.values())
    # Prefork for the ingest worker (hard time limits, a killed batch redelivered at once), threads for
    # the query worker (one model, one micro-batcher).
    assert "-P" not in workers["ingest-worker"] and _flag(workers["query-worker-0"], "-P") == "threads"


def test_test_stacks_name_their_one_query_worker_as_they_address_it() -> None:
    workers = dict(service_workers(Settings(), query_threads=8, webhooks=4))
    assert _flag(workers["query-worker"], "-c") == "8" and _flag(workers["webhook-worker"], "-c") == "4"


@pytest.mark.parametrize(
    ("consumes", "reniced"),
    [({"ingest"}, True), ({"ingest", "query"}, False), ({"query"}, False), ({"parse"}, False)],
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
