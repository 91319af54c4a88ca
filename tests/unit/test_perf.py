"""The speed benchmark's report and load loop, with a fake API client (numbers come from real runs only)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import perf, perf_ask, perf_ingest


class FakeClient:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def submit(self, path: str, body: dict[str, Any]) -> str:
        self.asked.append(body["question"])
        return body["question"]

    def wait(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        return {"state": "succeeded", "result": {"timings": {"batch_size": 2}}}


def test_load_asks_every_question_once_across_clients() -> None:
    client = FakeClient()
    row = perf_ask.load(client, {"collection": "c"}, [f"q{i}" for i in range(10)], 4, 5.0)  # type: ignore[arg-type]
    assert sorted(client.asked) == sorted(f"q{i}" for i in range(10))
    assert row["questions"] == 10 and row["clients"] == 4 and row["mean_batch_size"] == 2
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]


def test_a_failed_ask_stops_the_benchmark() -> None:
    client = FakeClient()
    client.wait = lambda job_id, timeout_s: {"state": "failed", "error": "boom"}  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        perf_ask.load(client, {}, ["q"], 1, 5.0)  # type: ignore[arg-type]


def test_report_prints_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    rate = {"chunks_per_s": 10.0, "seconds": 2.0, "chunks": 20}
    level = {"clients": 1, "questions": 4, "p50_ms": 100.0, "p95_ms": 120.0, "p99_ms": 130.0}
    report = {
        "machine": {
            "date": "d",
            "cpu": "cpu",
            "cores": 2,
            "device": "cpu",
            "dtype": "float32",
            "torch_threads_per_worker": 1,
        },
        "ingest": {
            "documents": 5,
            "service": rate,
            "bare": rate,
            "naive": rate,
            "service_over_bare": 1.0,
            "service_over_naive": 1.0,
        },
        "ask": {
            "default": {
                "levels": [{**level, "questions_per_s": 1.0, "mean_batch_size": 1.0}],
                "in_process": {"p50_ms": 90.0},
                "p50_over_in_process": 1.11,
                "qps_ratio": {"clients": 1, "ratio": 1.0},
            }
        },
        "search": {
            "questions": 3,
            "levels": [{"ef": 128, "default": True, "recall_at_10": 1.0, "p50_ms": 5.0}],
        },
    }
    perf.print_report(report)
    out = capsys.readouterr().out
    assert "service / naive = 1.00x" in out and "1.11x" in out and "ef  128 (default)" in out
    assert perf.parse_args(["d", "--only", "ask", "--docs", "10"]).only == ["ask"]


class _CountingEmbedder:
    """Counts whole passes (calls over more than the warm-up's 16 texts)."""

    def __init__(self) -> None:
        self.passes = 0

    def embed_documents(self, texts: list[str]) -> None:
        if len(texts) > 16:
            self.passes += 1


def test_the_bare_figure_is_the_median_of_its_passes() -> None:
    embedder = _CountingEmbedder()
    result = perf_ingest.bare([f"t{i}" for i in range(40)], embedder, passes=3)  # type: ignore[arg-type]
    assert embedder.passes == 3 and len(result["passes_s"]) == 3
    assert result["seconds"] == sorted(result["passes_s"])[1]
    assert result["chunks_per_s"] == 40 / result["seconds"]
