"""Ask latency and throughput through the API at several client counts, beside the in-process pipeline.

Each client submits a question and long-polls its job, as a real client does, then asks the next.
The in-process figure runs the same embed + search + rerank (the worker's own `Retriever`) on the same
questions in this process, with the ask worker's thread count: the ratio is what the service adds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from api.schemas import AskRequest
from bench.eval_beir import Client
from bench.metrics import percentile
from workers.runtime import Runtime


def timed_ask(
    client: Client, body: Mapping[str, Any], question: str, timeout_s: float
) -> tuple[float, dict[str, Any]]:
    """One question, submitted and long-polled as a client does: its latency in ms and the succeeded job.
    Raises if it failed."""
    start = time.perf_counter()
    job = client.wait(client.submit("/ask", {**body, "question": question}), timeout_s)
    if job["state"] != "succeeded":
        raise RuntimeError(f"ask failed: {job.get('error')}")
    return (time.perf_counter() - start) * 1000, job


def _one(client: Client, body: dict[str, Any], question: str, timeout_s: float) -> tuple[float, int]:
    """Latency in ms and the size of the micro-batch that answered the question."""
    ms, job = timed_ask(client, body, question, timeout_s)
    return ms, int(job["result"]["timings"].get("batch_size", 1))


def load(
    client: Client, body: dict[str, Any], questions: Sequence[str], clients: int, timeout_s: float
) -> dict[str, Any]:
    """`clients` threads, each asking its share of `questions` one after another."""
    shares = [list(questions[i::clients]) for i in range(clients)]

    def worker(share: list[str]) -> list[tuple[float, int]]:
        return [_one(client, body, q, timeout_s) for q in share]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(worker, shares) for r in part]
    wall = time.perf_counter() - start
    latencies = [ms for ms, _ in results]
    return {
        "clients": clients,
        "questions": len(results),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "questions_per_s": len(results) / wall,
        "mean_batch_size": statistics.fmean(size for _, size in results),
    }


def in_process(rt: Runtime, body: dict[str, Any], questions: Sequence[str]) -> dict[str, Any]:
    """The worker's pipeline (its own Retriever) on one question at a time, no HTTP, queue or Redis."""
    from workers.retrieval import Question  # noqa: PLC0415 - heavy: only this measurement loads it

    request = AskRequest.model_validate({**body, "question": questions[0]})  # the API's own rules
    backend = request.chosen_reranker(rt.settings.reranker_backend)
    ask = [Question(q, body["collection"], body["top_k"], backend) for q in questions]
    rt.retriever.answer(ask[0])  # warm-up
    times = []
    for question in ask:
        start = time.perf_counter()
        rt.retriever.answer(question)
        times.append((time.perf_counter() - start) * 1000)
    return {"questions": len(times), "p50_ms": statistics.median(times)}


def run(
    client: Client,
    rt: Runtime,
    body: dict[str, Any],
    questions: Sequence[str],
    *,
    levels: Sequence[int],
    per_client: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Warm the service, then each client level, then the in-process reference, with the ratios."""
    _one(client, body, questions[0], timeout_s)
    rows = []
    for clients in levels:
        count = max(per_client * clients, 2 * per_client)
        rows.append(
            load(client, body, [questions[i % len(questions)] for i in range(count)], clients, timeout_s)
        )
    reference = in_process(rt, body, questions[: max(per_client, 5)])
    by_clients = {row["clients"]: row for row in rows}
    result: dict[str, Any] = {"body": body, "levels": rows, "in_process": reference}
    if 1 in by_clients:
        result["p50_over_in_process"] = by_clients[1]["p50_ms"] / reference["p50_ms"]
        top = max(by_clients)
        result["qps_ratio"] = {
            "clients": top,
            "ratio": by_clients[top]["questions_per_s"] / by_clients[1]["questions_per_s"],
        }
    return result
