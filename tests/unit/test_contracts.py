"""One declaration per task (`common.contracts`): the worker registers exactly these, the API builds their
payloads, and a task refuses a message of the wrong shape with a reason instead of failing deep inside."""

from __future__ import annotations

from typing import Any

import pytest

from api.schemas import AskRequest
from celeryconfig import from_settings
from common import contracts
from common.contracts import ASK, CONTRACTS, DELETE, INGEST, INGEST_BATCH, SETTLE, WEBHOOK, StageOptions
from common.errors import InvalidRequest
from common.retries import RETRIABLE_ERRORS
from common.settings import Settings
from workers.app import app

EXAMPLES: dict[str, dict[str, Any]] = {
    INGEST.name: {"collection": "c", "source": {"kind": "jsonl", "path": "j/d.jsonl"}, "total": 3, "seq": 7},
    INGEST_BATCH.name: {
        "job_id": "a" * 32,
        "index": 0,
        "path": "p",
        "collection": "c",
        "on_duplicate": "error",
    },
    ASK.name: {"question": "q", "collection": "c", "top_k": 5, "options": {"mode": "bm25", "exact": False}},
    DELETE.name: {"collection": "c", "seq": 9},
    SETTLE.name: {"collection": "c", "doc_ids": ["d"], "owner": "j/batches/00000.jsonl"},
    WEBHOOK.name: {"job_id": "a" * 32, "event_id": "e"},
}


def test_the_worker_registers_exactly_the_declared_tasks_on_their_queues() -> None:
    app.loader.import_default_modules()  # what a worker imports at start (`include`)
    registered = {name for name in app.tasks if name.startswith("quarry.")}
    assert registered == {contract.name for contract in CONTRACTS} == set(EXAMPLES)
    routes = from_settings(Settings())["task_routes"]
    assert {name: route["queue"] for name, route in routes.items()} == contracts.TASK_QUEUES
    assert set(contracts.JOB_TASKS.values()) <= registered


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.name)
def test_a_payload_survives_the_wire_unchanged(contract: contracts.Contract[Any]) -> None:
    payload = contract.parse(EXAMPLES[contract.name])
    assert contract.parse(contract.kwargs(payload)) == payload
    sent = contract.kwargs(payload)
    assert EXAMPLES[contract.name].items() <= sent.items() and None not in sent.values()


@pytest.mark.parametrize(
    ("contract", "kwargs", "names"),
    [
        (ASK, {"question": "q", "collection": "c", "top_k": 0}, "top_k"),
        (ASK, {"question": "q", "collection": "c", "top_k": 1, "options": {"ef": "many"}}, "options.ef"),
        (INGEST_BATCH, {"job_id": "j", "index": 0, "path": "p"}, "collection"),
        (DELETE, {"collection": "c", "doc_ids": "d-1"}, "doc_ids"),
        (INGEST, {**EXAMPLES[INGEST.name], "colection": "typo"}, "colection"),
    ],
)
def test_a_malformed_message_is_refused_by_name_and_not_retried(
    contract: contracts.Contract[Any], kwargs: dict[str, Any], names: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        contract.parse(kwargs)
    assert contract.name in refused.value.detail and names in refused.value.detail
    assert not isinstance(refused.value, RETRIABLE_ERRORS)


def test_the_api_sends_a_payload_of_the_contract_it_names() -> None:
    with pytest.raises(TypeError, match=r"quarry\.ask takes Ask"):
        ASK.kwargs(contracts.Delete(collection="c"))  # type: ignore[arg-type]


def test_the_ask_requests_stage_switches_are_the_tasks_own() -> None:
    """A new ask option is one field of StageOptions: the request, its document and the task all get it."""
    assert set(StageOptions.model_fields) <= set(AskRequest.model_fields)
    body = AskRequest(question="q", mode="dense", ef=64, callback_url=None)
    assert body.stage_options() == StageOptions(mode="dense", ef=64)
