"""Which queued jobs the reconciler sends again (workers.reconciler): only a job still queued, never
delivered, whose message is in no queue list and not unacknowledged, in two sweeps in a row."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from kombu.transport.redis import Channel

from celeryconfig import make_celery
from common.contracts import ASK_TASK, DELETE_TASK, INGEST_BATCH_TASK, INGEST_TASK, JOB_TASKS, TASK_QUEUES
from common.job_schema import KEY_PREFIX
from common.messages import queue_lists
from common.settings import Settings
from workers.fanout import batch_kwargs, batch_path
from workers.handoff import unacked_tags
from workers.lost_batches import FannedJob, missing, queued_batches
from workers.reconciler import (
    QUEUED,
    Candidate,
    decide,
    for_settings,
    message_ids,
    route,
    unacked_ids,
)


def job(
    job_id: str = "a" * 32, state: str | None = "queued", *, kind: str = "ask", **extra: Any
) -> Candidate:
    fields: dict[str, Any] = {"request": {"question": "q"}, "delivered": False, **extra}
    raw_state = None if state is None else json.dumps(state).encode()
    return Candidate(key=KEY_PREFIX + job_id, state=raw_state, kind=kind, **fields)


def kombu_message(task_id: str, task: str = ASK_TASK) -> str:
    """A message as kombu's Redis transport stores it (headers in clear, body base64)."""
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None}
    properties = {"correlation_id": task_id, "body_encoding": "base64", "delivery_tag": "t"}
    return json.dumps({"body": "e30=", "headers": headers, "properties": properties})


def test_a_job_missing_from_the_broker_is_sent_again_only_on_the_second_look() -> None:
    first = decide([job()], in_broker=set(), suspects=set())
    assert first.resend == [] and first.suspects == {"a" * 32} and first.drop == []
    second = decide([job()], in_broker=set(), suspects=first.suspects)
    assert [c.job_id for c in second.resend] == ["a" * 32] and second.suspects == set()


def test_a_message_seen_in_the_broker_in_between_starts_the_count_again() -> None:
    """Absent, then present (it was between BRPOP and its HSET), then absent: not yet twice in a row."""
    first = decide([job()], set(), set())
    seen = decide([job()], {"a" * 32}, first.suspects)
    assert seen.resend == [] and seen.suspects == set()
    assert decide([job()], set(), seen.suspects).resend == []


def test_a_job_waiting_in_its_queue_or_unacked_is_never_sent_again() -> None:
    decision = decide([job()], in_broker={"a" * 32}, suspects={"a" * 32})
    assert decision == decide([], set(), set())


def test_a_delivered_job_is_left_to_the_brokers_redelivery() -> None:
    decision = decide([job(delivered=True)], in_broker=set(), suspects={"a" * 32})
    assert decision.resend == [] and decision.suspects == set() and decision.drop == []


def test_jobs_no_longer_queued_or_expired_leave_the_index() -> None:
    started, ended, gone = job("b" * 32, "running"), job("c" * 32, "succeeded"), job("d" * 32, None)
    decision = decide([started, ended, gone], set(), {"b" * 32, "c" * 32, "d" * 32})
    assert decision.resend == [] and decision.drop == [started.key, ended.key, gone.key]


def test_a_job_without_a_task_or_request_is_not_sent() -> None:
    unknown, no_request = job("e" * 32, kind="reindex"), job("f" * 32, request=None)
    decision = decide([unknown, no_request], set(), {"e" * 32, "f" * 32})
    assert decision.resend == [] and decision.drop == []


def test_every_job_kind_has_one_task_and_queue() -> None:
    assert route("ingest") == (INGEST_TASK, "parse")  # the coordinator; its batches go to `ingest`
    assert route("delete") == (DELETE_TASK, "ingest")
    assert route("ask") == (ASK_TASK, "ask")
    assert route(None) is None and route("webhook") is None
    routes = make_celery(Settings()).conf.task_routes  # Celery routes from the same table
    assert {task: route["queue"] for task, route in routes.items()} == TASK_QUEUES
    assert INGEST_BATCH_TASK in TASK_QUEUES and set(JOB_TASKS.values()) <= set(TASK_QUEUES)


def test_message_ids_read_the_task_id_from_the_headers_only() -> None:
    question = 'what is "id": "x"?'  # a header repr may hold anything a client wrote
    tricky = json.loads(kombu_message("1" * 32))
    tricky["headers"]["kwargsrepr"] = repr({"question": question, "job_id": "2" * 32})
    messages = [kombu_message("3" * 32), json.dumps(tricky), b"not json", json.dumps({"no": "headers"}), "[]"]
    assert message_ids(messages) == {"1" * 32, "3" * 32}


def test_unacked_ids_read_the_message_of_each_entry() -> None:
    entries = [
        json.dumps([json.loads(kombu_message("4" * 32)), "", "ask"]),
        b"garbage",
        json.dumps({"not": "a list"}),
        "[]",
    ]
    assert unacked_ids(entries) == {"4" * 32}


def test_queue_lists_are_kombus_priority_lists() -> None:
    assert queue_lists("ask") == [
        "ask",
        f"ask{Channel.sep}3",
        f"ask{Channel.sep}6",
        f"ask{Channel.sep}9",
    ]


def test_no_reconciler_without_a_redis_broker_or_when_switched_off() -> None:
    def send(task: str, task_id: str, kwargs: dict[str, Any]) -> None:
        raise AssertionError("never called")

    rabbit = Settings(broker_url="amqp://guest@127.0.0.1:5672//")
    assert for_settings(rabbit, send) is None
    assert for_settings(Settings(requeue_after_s=0), send) is None
    assert for_settings(Settings(redis_url="redis://127.0.0.1:1/0"), send) is not None  # connects lazily


def test_queued_is_how_a_record_stores_the_state() -> None:
    assert json.dumps("queued") == QUEUED


# --- lost batch messages of a running ingest job (workers.lost_batches) ---


def fanned(state: str = "running", *, counted: set[int] | None = None, **extra: Any) -> FannedJob:
    fields: dict[str, Any] = {"total": 3, "beating": False, "request": {"collection": "c", "seq": 7}, **extra}
    return FannedJob(
        key=KEY_PREFIX + "j" * 32, state=json.dumps(state).encode(), counted=counted or set(), **fields
    )


def batch_message(job_id: str, index: int, task: str = INGEST_BATCH_TASK) -> dict[str, Any]:
    body = json.dumps([[], {"job_id": job_id, "index": index, "path": "p"}, {}])
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "headers": {"task": task, "id": uuid.uuid4().hex},
    }


def test_a_batch_counted_nowhere_and_queued_nowhere_is_missing() -> None:
    lost, drop = missing([fanned(counted={0})], in_broker={("j" * 32, 2)})
    assert lost == {"j" * 32: [1]} and drop == []


def test_a_job_with_a_task_beating_or_every_batch_accounted_for_is_left_alone() -> None:
    assert missing([fanned(beating=True)], set()) == ({}, [])
    assert missing([fanned(counted={0, 1})], {("j" * 32, 2)}) == ({}, [])


def test_an_ended_job_leaves_the_fanned_index() -> None:
    job = fanned("succeeded")
    assert missing([job], set()) == ({}, [job.key])


def test_batches_in_the_broker_are_read_from_the_message_body() -> None:
    messages = [batch_message("a" * 32, 0), batch_message("a" * 32, 1, task=ASK_TASK), {"body": "!"}, None]
    assert queued_batches(messages) == {("a" * 32, 0)}


def test_a_batch_is_sent_again_with_the_kwargs_its_coordinator_gave_it() -> None:
    request = {"collection": "c", "source": {}, "total": 9, "on_duplicate": "replace", "seq": 4}
    assert batch_kwargs("j" * 32, 2, request) == {
        "job_id": "j" * 32,
        "index": 2,
        "path": batch_path("j" * 32, 2),
        "collection": "c",
        "on_duplicate": "replace",
        "seq": 4,
    }


def test_the_hand_off_finds_a_task_s_delivery_tag_and_skips_what_is_not_a_celery_message() -> None:
    entries = {
        b"t1": json.dumps([{"headers": {"id": "task-1"}}, "", "ingest"]).encode(),
        b"t2": b"not json",
        b"t3": json.dumps([{"headers": {}}, "", "ask"]).encode(),
        b"t4": json.dumps([]).encode(),
    }
    assert unacked_tags(entries) == {"task-1": "t1"}
