"""The chaos run, short: 90 s of mixed ingest, replace, delete and ask load while workers, milvus-lite and
redis-server are killed at random (fixed seed), some at write-path points; then `bench.chaos`'s verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Options, report, run

pytestmark = pytest.mark.integration
BASIC_FAULTS = {
    "kill_ingest_child",
    "kill_ingest_worker",
    "kill_ask_worker",
    "restart_milvus",
    "restart_redis",
}


def test_a_short_chaos_run_ends_every_job_and_leaves_one_whole_version_of_each_document(
    tmp_path: Path,
) -> None:
    result = run(Options(seconds=90, seed=7, settle_s=120), tmp_path)
    report(result)  # counts, faults and violations in the test's output (-rA, or on failure)
    counts = result.counts
    assert result.violations == [], "\n".join(result.violations)
    assert counts["jobs"]["accepted"] >= 15, counts  # the load really ran
    assert counts["document_outcomes"].get("succeeded", 0) >= 5, counts
    assert counts["documents_present"] >= 3, counts  # documents were there to be broken
    assert set(counts["faults"]) >= BASIC_FAULTS, counts  # every basic kind of fault happened
