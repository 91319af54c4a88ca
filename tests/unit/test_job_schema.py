"""The declared Redis layout of a job: names pinned (stored data outlives a release), the typed record
within the declared fields, and Lua scripts that name only declared fields."""

from __future__ import annotations

import dataclasses

import pytest

from common import ledger, transitions
from common.job_record import JobRecord
from common.job_schema import BEAT_PREFIX, CREATED_INDEX, Field, JobKeys, declared, list_index, lua


def test_key_names_are_the_ones_stored_by_earlier_releases() -> None:
    keys = JobKeys("abc")
    assert keys.record == "quarry:job:abc"
    assert JobKeys.of_record(keys.record) == keys
    assert (keys.events, keys.deliveries, keys.delivery_tokens, keys.batches) == (
        "quarry:job:abc:events",
        "quarry:job:abc:deliveries",
        "quarry:job:abc:deliveries:tokens",
        "quarry:job:abc:batches",
    )
    assert (keys.lease(3), keys.docs, keys.order(), keys.order("failed")) == (
        "quarry:job:abc:lease:3",
        "quarry:job:abc:docs",
        "quarry:job:abc:order",
        "quarry:job:abc:order:failed",
    )
    assert keys.celery_meta == "celery-task-meta-abc"
    assert (list_index("team-a"), list_index(None)) == ("quarry:jobs:owner:team-a", CREATED_INDEX)
    assert CREATED_INDEX == "quarry:jobs:created"


def test_the_record_a_client_reads_is_made_of_declared_fields() -> None:
    names = {f.name for f in dataclasses.fields(JobRecord)} - {"job_id"}
    assert names <= {str(field) for field in Field}


def test_declared_knows_the_beats_and_nothing_else() -> None:
    assert declared("state") and declared(BEAT_PREFIX + "task-1") and declared(Field.BATCHES_DONE)
    assert not declared("stat") and not declared("beat")


def test_a_script_naming_an_undeclared_field_fails_when_its_module_loads() -> None:
    script = "redis.call('hget', KEYS[1], '$batches_total')"
    assert lua(script) == "redis.call('hget', KEYS[1], 'batches_total')"
    with pytest.raises(KeyError):
        lua("redis.call('hget', KEYS[1], '$batches_totl')")


def test_the_scripts_name_the_fields_in_full() -> None:
    for script in (ledger._FINISH, transitions._MOVE):
        assert "$" not in script
    assert "'batches_done'" in ledger._FINISH and "'state'" in transitions._MOVE
