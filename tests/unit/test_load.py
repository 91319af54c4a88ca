"""The load test's accounting: lost jobs, 5xx responses and percentiles come out right."""

from __future__ import annotations

from bench.load import Tally, report


def test_report_counts_lost_jobs_and_server_errors() -> None:
    tally = Tally()
    for status in (202, 202, 202, 429, 503, 200):
        tally.http("POST /api/v1/ask", status)
    tally.submitted.update({"a": "ask", "b": "ask", "c": "ingest"})
    tally.end("a", "succeeded", "ask", 100.0)
    tally.end("c", "failed", "ingest", 300.0)
    out = report(tally, 12.0)
    assert out["requests"] == 6 and out["responses_5xx"] == 1
    assert out["lost_jobs"] == 1 and out["lost_job_ids"] == ["b"]
    assert out["jobs_by_state"] == {"ask succeeded": 1, "ingest failed": 1}
    assert out["latency_ms"]["ask"] == {"p50": 100.0, "p95": 100.0, "p99": 100.0, "n": 1}
    assert "submit" not in out["latency_ms"]
