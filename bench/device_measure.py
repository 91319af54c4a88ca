"""What the device benchmark measures on each stack, and the bare model it compares ingestion with.

Every figure goes through the API as a client sees it (submit, long-poll the job), one client at a time:
the question is how one device is shared between bulk ingestion and questions, not how far it scales.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench import perf_ingest
from bench.device_report import MODES, latencies, startup
from bench.device_stack import Stack
from bench.eval_beir import Client, submit_documents, wait_jobs
from bench.perf_ask import timed_ask
from common.settings import Settings

Bodies = Mapping[str, dict[str, Any]]  # mode -> the ask request without its question
INGEST_REQUEST_DOCS = 1000  # documents per ingest request (one job each), as `make eval` sends them
NEXT_QUESTIONS = 9  # the first question after ready is compared with the median of these
BARE_PASSES = 3  # the bare model's figure is the median of these passes, back to back


def bodies(collection: str) -> dict[str, dict[str, Any]]:
    """The ask requests of each mode: the default pipeline (reranked), and without the reranker."""
    base = {"collection": collection, "top_k": 10}
    return {"reranked": base, "plain": {**base, "rerank": False}}


def ask_ms(client: Client, body: Mapping[str, Any], question: str, timeout_s: float) -> float:
    """One question, submitted and long-polled as a client does; its latency in ms. Raises if it failed."""
    return timed_ask(client, body, question, timeout_s)[0]


def warm_start(
    stack: Stack,
    client: Client,
    body: Mapping[str, Any],
    questions: Sequence[str],
    *,
    docs: Sequence[dict[str, Any]],
    timeout_s: float,
) -> dict[str, Any]:
    """Seconds from start to ready and to the first answer; the first question after ready vs the next 9;
    then how long the first ingest (of `docs`, a couple) takes, which also keeps a model load out of (b)."""
    ready_s, endpoint = stack.wait_ready(timeout_s)
    first_ms, first_job = timed_ask(client, body, questions[0], timeout_s)
    first_answer_s = stack.since_start()
    following = [ask_ms(client, body, q, timeout_s) for q in questions[1 : 1 + NEXT_QUESTIONS]]
    again, again_job = timed_ask(client, body, questions[0], timeout_s)  # the first question's own cost, warm
    stages = {"first_stages_ms": _stages(first_job), "again_stages_ms": _stages(again_job)}
    start = time.perf_counter()
    wait_jobs(client, submit_ingest(client, docs, f"bench-warm-{uuid.uuid4().hex[:8]}"), timeout_s)
    first_ingest = {"first_ingest_docs": len(docs), "first_ingest_ms": (time.perf_counter() - start) * 1000}
    report = startup(ready_s, endpoint, first_answer_s, first_ms, following, again_ms=again)
    return report | first_ingest | stages


def _stages(job: Mapping[str, Any]) -> dict[str, float]:
    """The worker's own stage timings of an answered question (embed, search, rerank): where a cold one
    spends its extra time, against the rest of its latency (API, broker, polling)."""
    return {k: v for k, v in job["result"].get("timings", {}).items() if k.endswith("_ms")}


def idle(client: Client, modes: Bodies, questions: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """p50/p95 of each mode at 1 client with nothing else running (the same questions for each mode)."""
    return {mode: latencies([ask_ms(client, modes[mode], q, timeout_s) for q in questions]) for mode in MODES}


def submit_ingest(client: Client, docs: Sequence[dict[str, Any]], collection: str) -> list[str]:
    return submit_documents(client, docs, collection, INGEST_REQUEST_DOCS)[0]


def _until(check: Callable[[], bool], done: threading.Event, timeout_s: float) -> None:
    """Poll `check` until it holds or `done` is set (a tiny ingest may end before it is seen running)."""
    deadline = time.monotonic() + timeout_s
    while not check() and not done.wait(0.05):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ingest batch started in {timeout_s:.0f} s")


def under_ingest(
    stack: Stack,
    client: Client,
    *,
    docs: Sequence[dict[str, Any]],
    modes: Bodies,
    questions: Sequence[str],
    timeout_s: float,
    max_questions: int = 0,
) -> dict[str, Any]:
    """Questions (both modes, alternating, 1 client) from when the first batch of an ingest of `docs` runs
    until the ingest ends, or until `max_questions` were asked (0: no limit); p50/p95 and count per mode,
    the ingest's rate while they were asked, and its whole time."""
    collection = f"bench-load-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    jobs = submit_ingest(client, docs, collection)
    done, ended = threading.Event(), [0.0]
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            wait_jobs(client, jobs, timeout_s)
        except BaseException as exc:  # re-raised by the asking thread
            errors.append(exc)
        finally:
            ended[0] = time.perf_counter()
            done.set()

    waiter = threading.Thread(target=finish, name="ingest-waiter", daemon=True)
    waiter.start()
    _until(lambda: stack.batch_running(jobs), done, timeout_s)
    first_batch_s = time.perf_counter() - start
    asked = ask_alternating(
        client, modes=modes, questions=questions, done=done, limit=max_questions, timeout_s=timeout_s
    )
    window = {"asking_s": time.perf_counter() - start, "chunks_while_asking": _chunks(client, collection)}
    waiter.join()
    if errors:
        raise errors[0]
    seconds = ended[0] - start
    chunks = _chunks(client, collection)
    return {
        "documents": len(docs),
        "jobs": len(jobs),
        "first_batch_s": first_batch_s,
        "ingest_seconds": seconds,
        "chunks": chunks,
        # the ingest's rate while questions were asked back to back (from its submission)
        "chunks_per_s": window["chunks_while_asking"] / window["asking_s"],
        "ingest_chunks_per_s": chunks / seconds,
        **window,
        **{mode: latencies(asked[mode]) for mode in MODES},
    }


def ask_alternating(
    client: Client,
    *,
    modes: Bodies,
    questions: Sequence[str],
    done: threading.Event,
    limit: int,
    timeout_s: float,
) -> dict[str, list[float]]:
    """Each mode's latencies, asking the modes in turn until `done` is set or `limit` were asked (0: none)."""
    asked: dict[str, list[float]] = {mode: [] for mode in MODES}
    n = 0
    while not done.is_set() and (limit <= 0 or n < limit):
        mode = MODES[n % len(MODES)]
        asked[mode].append(ask_ms(client, modes[mode], questions[n % len(questions)], timeout_s))
        n += 1
    return asked


def _chunks(client: Client, collection: str) -> int:
    return int(client.get(f"/collections/{collection}")["chunks"])


def ingest_rate(client: Client, docs: Sequence[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """Chunks/s through the API into a scratch collection (deleted after), as bench.perf measures it."""
    return {"documents": len(docs), **perf_ingest.service(client, docs, timeout_s)}


def small_jobs(client: Client, docs: Sequence[dict[str, Any]], runs: int, timeout_s: float) -> dict[str, Any]:
    """Seconds from upload to done of a small job (under one batch's worth), `runs` times in turn: how much of
    the device a job that small gets (`INGEST_SMALL_JOB_BATCHES`)."""
    passes = [perf_ingest.service(client, docs, timeout_s) for _ in range(runs)]
    seconds = [p["seconds"] for p in passes]
    return {
        "documents": len(docs),
        "chunks": passes[0]["chunks"],
        "runs_s": seconds,
        "median_s": statistics.median(seconds),
    }


def bare_around(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The bare model's figure from its passes before and after the stacks, as the median of them all: the
    stacks are measured in between, so a machine that speeds up or slows down during the run (a shared VM
    did, by 10 % within minutes) moves both sides of the ratio alike. Each side's own figure is kept."""
    passes = [*before["passes_s"], *after["passes_s"]]
    seconds = statistics.median(passes)
    return {
        **before,
        "seconds": seconds,
        "chunks_per_s": before["chunks"] / seconds,
        "passes_s": passes,
        "before_chunks_per_s": before["chunks_per_s"],
        "after_chunks_per_s": after["chunks_per_s"],
    }


def bare_all_cores(docs: Sequence[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The service's embedder (same dtype, token budget, length sorting; no gate) on every core of the
    machine, embedding exactly the chunks the service makes of `docs`."""
    import torch  # noqa: PLC0415 - heavy: only this measurement loads it

    from workers.embedder import load_embedder  # noqa: PLC0415 - heavy: only this measurement loads it

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    embedder = load_embedder(settings)
    texts = perf_ingest.chunk_texts(docs, embedder, settings)
    result = {"threads": threads, "documents": len(docs), **perf_ingest.bare(texts, embedder, BARE_PASSES)}
    del embedder
    if torch.cuda.is_available():  # the stacks' workers get the whole GPU
        torch.cuda.empty_cache()
    return result
