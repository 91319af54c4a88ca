"""The device benchmark's pure parts: configurations, summary and ratio maths, the report's shape (its
numbers come from real runs only), and its question loop under an ingest, with fakes."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from bench import device, device_measure
from bench.device_report import (
    CONTROLLED,
    MODES,
    TARGETS,
    build,
    configs,
    effective,
    latencies,
    ratio,
    ratios,
    select,
    stack_env,
    startup,
    table,
)
from common.settings import Settings


def test_every_configuration_sets_what_it_compares() -> None:
    found = configs(8)
    assert list(found) == ["device", "split", "none", "nice", "gate", "flush-each-batch", "one-batch"]
    shared = {"torch_threads": 8, "ingest_processes": 2, "ingest_threads": 4}  # the ingest pair shares them
    assert {name: effective(env, 8) for name, env in found.items()} == {
        "device": shared | {"question_gate": True, "ingest_nice": 10},
        "split": {"torch_threads": 4, "ingest_processes": 1, "ingest_threads": 4}
        | {"question_gate": False, "ingest_nice": 0},
        "none": shared | {"question_gate": False, "ingest_nice": 0},
        "nice": shared | {"question_gate": False, "ingest_nice": 10},
        "gate": shared | {"question_gate": True, "ingest_nice": 0},
        "flush-each-batch": shared | {"question_gate": True, "ingest_nice": 10},
        "one-batch": shared | {"question_gate": True, "ingest_nice": 10},
    }
    assert found["flush-each-batch"]["MILVUS_FLUSH_INTERVAL_S"] == "0"  # otherwise the device defaults
    assert found["one-batch"]["INGEST_SMALL_JOB_BATCHES"] == "1"
    assert Settings.model_fields["ingest_small_job_batches"].default == 2  # `device` spreads a small job
    assert configs(1)["split"]["TORCH_THREADS"] == "1"  # never 0 threads
    assert effective({}, 8, gpu=True)["ingest_processes"] == 1  # one model copy on a GPU


def test_device_is_make_runs_defaults() -> None:
    fields = Settings.model_fields
    assert fields["torch_threads"].default is None  # unset: every core, as `device` leaves it
    assert "TORCH_THREADS" not in configs(2)["device"]
    assert effective(configs(2)["device"], 2) == {
        "torch_threads": 2,
        "ingest_processes": Settings().ingest_processes(gpu=False),
        "ingest_threads": 1,  # 2 cores, shared by the 2 ingest processes
        "question_gate": fields["question_gate"].default,
        "ingest_nice": fields["ingest_nice"].default,
    }


def test_select_keeps_the_order_given_and_refuses_unknown_names() -> None:
    assert list(select("split, device,split", 2)) == ["split", "device"]
    with pytest.raises(ValueError, match="bogus"):
        select("device,bogus", 2)
    with pytest.raises(ValueError):
        select(" , ", 2)


def test_a_stack_environment_drops_what_the_configuration_and_the_stack_decide() -> None:
    base = {
        "PATH": "/bin",
        "TORCH_THREADS": "7",
        "QUESTION_GATE": "false",
        "API_KEYS": "[]",
        "API_HOST": "0.0.0.0",
        "BROKER_URL": "redis://elsewhere",
        "DEVICE": "cuda",
    }
    env = stack_env(base, {"INGEST_NICE": "0"})
    assert env == {"PATH": "/bin", "DEVICE": "cuda", "API_HOST": "127.0.0.1", "INGEST_NICE": "0"}
    assert not set(CONTROLLED) & set(stack_env(base, {}))


def test_latencies_and_ratios_have_no_nan() -> None:
    assert latencies([]) == {"n": 0, "p50_ms": None, "p95_ms": None}
    row = latencies([10.0, 20.0, 30.0, 40.0, 50.0])
    assert row["n"] == 5 and row["p50_ms"] == 30.0 and row["p95_ms"] == pytest.approx(48.0)
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_startup_compares_the_first_question_with_the_median_of_the_next() -> None:
    result = startup(4.0, "/readyz", 5.5, 300.0, [100.0, 200.0, 150.0])
    assert result["next_median_ms"] == 150.0 and result["first_over_next"] == 2.0
    assert result["next_questions"] == 3 and result["ready_endpoint"] == "/readyz"
    assert startup(1.0, "/healthz", 2.0, 50.0, [])["first_over_next"] is None
    again = startup(1.0, "/readyz", 2.0, 300.0, [100.0, 150.0, 200.0], again_ms=250.0)
    assert again["first_again_ms"] == 250.0 and again["first_over_again"] == 1.2


def _config(chunks_per_s: float, idle_p50: float, under_p50: float, chunks: int = 100) -> dict[str, Any]:
    def modes(p50: float) -> dict[str, Any]:
        return {mode: {"n": 4, "p50_ms": p50, "p95_ms": 2 * p50} for mode in MODES}

    return {
        "settings": effective({}, 2),
        "startup": startup(3.0, "/readyz", 4.0, 120.0, [100.0] * 9)
        | {"first_stages_ms": {"embed_ms": 9.0, "rerank_ms": 442.0}, "again_stages_ms": {"embed_ms": 10.0}},
        "ingest": {
            "documents": 10,
            "seconds": chunks / chunks_per_s,
            "chunks": chunks,
            "chunks_per_s": chunks_per_s,
        },
        "idle": modes(idle_p50),
        "under_ingest": {"chunks_per_s": chunks_per_s / 2} | modes(under_p50),
    }


def test_ratios_are_the_ones_the_targets_are_about() -> None:
    results = {
        "device": _config(60.0, 100.0, 130.0),
        "split": _config(40.0, 100.0, 300.0, chunks=99),
        "gate": {"settings": effective({}, 2), "error": "RuntimeError('boom')"},
    }
    bare = {"chunks": 100, "chunks_per_s": 80.0, "threads": 2}
    r = ratios(results, bare)
    assert r["service_over_bare"] == {"device": 0.75, "split": 0.5, "gate": None}
    assert r["device_over_split"] == 1.5
    assert r["p50_under_ingest_over_idle"] == {
        "device": {"reranked": 1.3, "plain": 1.3},
        "split": {"reranked": 3.0, "plain": 3.0},
    }
    assert r["chunks_match_bare"] == {"device": True, "split": False}
    assert ratios({"device": results["device"]}, None)["device_over_split"] is None


def test_report_is_strict_json_and_prints_every_part() -> None:
    machine = {"date": "d", "cpu": "cpu", "cores": 2, "device": "cpu", "dtype": "float32", "torch": "t"}
    machine |= {"embedding_model": "m", "cpu_flags": {"avx512_bf16": False, "amx_bf16": False}}
    results = {"device": _config(60.0, 100.0, 130.0), "split": {"settings": effective({}, 2), "error": "x"}}
    results["device"]["small_ingest"] = {"documents": 40, "runs_s": [1.2, 1.25, 1.3], "median_s": 1.25}
    report = build(machine, {"docs": "10"}, {"chunks": 100, "chunks_per_s": 80.0, "threads": 2}, results)
    assert set(report) == {"machine", "args", "targets", "bare", "configs", "ratios"}
    assert report["targets"] == TARGETS
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    text = table(report)
    for needle in ("80.0 chunks/s", "split: FAILED", "0.75x", "1.30x", "target >= 1.4", "target <= 1.5"):
        assert needle in text
    assert "small job s" in text and " 1.25\n" in text  # the small job's median, at the device row's end
    assert "device  worker stages of the 1st question / again, ms: embed 9/10, rerank 442/-" in text
    assert "split   worker stages of the 1st question / again, ms: -" in text
    assert "bare model: not run" in table(build(machine, {}, None, {}))


def test_bare_figure_is_the_median_of_its_passes_before_and_after_the_stacks() -> None:
    before = {"chunks": 300, "threads": 2, "seconds": 3.0, "chunks_per_s": 100.0, "passes_s": [3.0, 2.9, 3.3]}
    after = {"chunks": 300, "threads": 2, "seconds": 2.0, "chunks_per_s": 150.0, "passes_s": [2.0, 2.2, 1.9]}
    bare = device_measure.bare_around(before, after)
    assert bare["passes_s"] == [3.0, 2.9, 3.3, 2.0, 2.2, 1.9]
    assert bare["seconds"] == 2.55 and bare["chunks_per_s"] == 300 / 2.55  # a drift moves both sides alike
    assert (bare["before_chunks_per_s"], bare["after_chunks_per_s"]) == (100.0, 150.0)
    machine = {"date": "d", "cpu": "cpu", "cores": 2, "device": "cpu", "dtype": "float32", "torch": "t"}
    text = table(build(machine | {"embedding_model": "m"}, {}, bare, {}))
    assert "117.6 chunks/s (300 chunks; median of all passes: 100.0 before the stacks, 150.0 after)" in text


def test_defaults_are_the_full_size_run() -> None:
    args = device.parse_args([])
    assert (args.docs, args.load_docs) == (1000, 1500)
    assert args.configs == "device,split,none,nice,gate,flush-each-batch,one-batch"
    assert args.data_dir == Path("../shared/data/scifact-train")
    assert args.json.name.startswith("device-") and args.json.suffix == ".json"


class FakeStack:
    def batch_running(self, job_ids: list[str]) -> bool:
        return True


class FakeClient:
    """Ingest jobs end once `asks_before_end` questions were asked; every question succeeds."""

    def __init__(self, asks_before_end: int) -> None:
        self.asked: list[dict[str, Any]] = []
        self.ingest_ended = threading.Event()
        self.asks_before_end = asks_before_end
        self.collections: list[str] = []

    def submit(self, path: str, body: dict[str, Any]) -> str:
        if path == "/ask":
            self.asked.append(body)
            if len(self.asked) >= self.asks_before_end:
                self.ingest_ended.set()
            return "ask"
        self.collections.append(body["collection"])
        return f"ingest{len(self.collections)}"

    def wait(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        if job_id.startswith("ingest"):
            assert self.ingest_ended.wait(timeout_s)
        return {"state": "succeeded"}

    def get(self, path: str) -> dict[str, Any]:
        return {"chunks": 42}


def under_fake_ingest(client: FakeClient, max_questions: int = 0) -> dict[str, Any]:
    """Three documents ingested under questions q1, q2 in turn, both modes, through the fake client."""
    docs = [{"id": str(i), "text": "t", "title": "", "metadata": {}} for i in range(3)]
    return device_measure.under_ingest(
        FakeStack(),  # type: ignore[arg-type]
        client,  # type: ignore[arg-type]
        docs=docs,
        modes=device_measure.bodies("c"),
        questions=["q1", "q2"],
        timeout_s=10.0,
        max_questions=max_questions,
    )


def test_questions_alternate_modes_until_the_ingest_ends() -> None:
    client = FakeClient(asks_before_end=5)
    result = under_fake_ingest(client)
    asked = len(client.asked)
    assert asked >= 5  # at most one more: the one in flight when the ingest ended
    assert result["reranked"]["n"] + result["plain"]["n"] == asked
    assert result["reranked"]["n"] - result["plain"]["n"] in (0, 1)
    assert [b.get("rerank", True) for b in client.asked[:4]] == [True, False, True, False]
    assert [b["question"] for b in client.asked[:3]] == ["q1", "q2", "q1"]
    assert result["chunks"] == 42 and result["jobs"] == 1 and len(set(client.collections)) == 1


class EndsAfterAsking(FakeClient):
    """The ingest outlasts any number of questions: it ends only once they stopped, when the benchmark
    reads how many chunks were stored while they were asked."""

    def get(self, path: str) -> dict[str, Any]:
        self.ingest_ended.set()
        return super().get(path)


def test_questions_under_ingest_stop_at_their_limit_and_the_ingest_is_still_awaited() -> None:
    client = EndsAfterAsking(asks_before_end=1_000_000)
    result = under_fake_ingest(client, max_questions=6)
    assert len(client.asked) == 6 and result["reranked"]["n"] == result["plain"]["n"] == 3
    assert result["ingest_seconds"] >= result["asking_s"]  # the whole ingest, past the questions
    assert result["chunks_while_asking"] == 42 and result["chunks_per_s"] == 42 / result["asking_s"]
