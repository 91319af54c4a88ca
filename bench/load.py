"""Load test: concurrent clients asking and ingesting for a bounded time against the running service.

Prints requests and errors by status, jobs by final state, lost jobs (submitted, never ended) and
latency percentiles. Targets: 0 lost jobs, 0 responses >= 500.

    python -m bench.load ../shared/data/scifact-train --minutes 5 --askers 8 --ingesters 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.eval_beir import read_jsonl, to_document
from bench.metrics import percentile

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Tally:
    """Everything the clients saw, shared by their threads under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    submitted: dict[str, str] = field(default_factory=dict)  # job id -> kind
    ended: set[str] = field(default_factory=set)
    latency_ms: dict[str, list[float]] = field(
        default_factory=lambda: {"submit": [], "ask": [], "ingest": []}
    )
    transport_errors: Counter[str] = field(default_factory=Counter)  # exception name -> count

    def http(self, label: str, status: int) -> None:
        with self.lock:
            self.statuses[f"{label} {status}"] += 1

    def end(self, job_id: str, state: str, kind: str, ms: float) -> None:
        with self.lock:
            self.ended.add(job_id)
            self.states[f"{kind} {state}"] += 1
            self.latency_ms[kind].append(ms)


class LoadClient:
    """One thread's session; every response's status is counted, 429/503 honour Retry-After."""

    def __init__(self, url: str, api_key: str | None, tally: Tally) -> None:
        self.url, self.tally = url.rstrip("/"), tally
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, label: str, method: str, path: str, **kwargs: Any) -> requests.Response | None:
        try:
            response = self.session.request(method, self.url + path, timeout=60, **kwargs)
        except requests.RequestException as exc:
            with self.tally.lock:
                self.tally.transport_errors[f"{label} {type(exc).__name__}"] += 1
            return None
        self.tally.http(label, response.status_code)
        if response.status_code in (429, 503):
            retry = response.headers.get("Retry-After", "1")
            time.sleep(min(float(retry) if retry.isdigit() else 1.0, 10.0))
        return response

    def submit(self, kind: str, path: str, body: dict[str, Any]) -> str | None:
        start = time.perf_counter()
        headers = {"Idempotency-Key": uuid.uuid4().hex}  # a retried POST never makes a second job
        for _ in range(5):
            response = self.call(f"POST {path}", "POST", path, json=body, headers=headers)
            if response is not None and response.status_code == 202:
                job_id = str(response.json()["job_id"])
                with self.tally.lock:
                    self.tally.submitted[job_id] = kind
                    self.tally.latency_ms["submit"].append((time.perf_counter() - start) * 1000)
                return job_id
            if response is not None and response.status_code not in (429, 503):
                return None
        return None

    def follow(self, job_id: str, kind: str, started: float, deadline: float) -> None:
        """Long-poll until the job ends or `deadline`; unfinished jobs are counted as lost at the end."""
        while time.monotonic() < deadline:
            response = self.call("GET /jobs", "GET", f"/api/v1/jobs/{job_id}", params={"wait": 10})
            if response is not None and response.status_code == 200:
                state = response.json()["state"]
                if state in TERMINAL:
                    self.tally.end(job_id, state, kind, (time.perf_counter() - started) * 1000)
                    return


@dataclass(frozen=True)
class Plan:
    collection: str  # where the ingesters write
    ask_collection: str  # what the askers search
    stop_at: float  # monotonic time after which nothing new is submitted
    drain_s: float  # how long jobs submitted before stop_at may still take
    docs_per_job: int


def asker(client: LoadClient, plan: Plan, questions: list[str]) -> None:
    rng = random.Random()
    while time.monotonic() < plan.stop_at:
        started = time.perf_counter()
        body = {"question": rng.choice(questions), "collection": plan.ask_collection, "top_k": 5}
        job_id = client.submit("ask", "/api/v1/ask", body)
        if job_id:
            client.follow(job_id, "ask", started, plan.stop_at + plan.drain_s)


def ingester(client: LoadClient, plan: Plan, docs: list[dict[str, Any]]) -> None:
    rng = random.Random()
    while time.monotonic() < plan.stop_at:
        started = time.perf_counter()
        body = {
            "collection": plan.collection,
            "documents": rng.sample(docs, plan.docs_per_job),
            "on_duplicate": "replace",
        }
        job_id = client.submit("ingest", "/api/v1/documents", body)
        if job_id:
            client.follow(job_id, "ingest", started, plan.stop_at + plan.drain_s)


def report(tally: Tally, seconds: float) -> dict[str, Any]:
    lost = sorted(set(tally.submitted) - tally.ended)
    server_errors = sum(n for key, n in tally.statuses.items() if int(key.rsplit(" ", 1)[1]) >= 500)
    latency = {
        kind: {f"p{q}": round(percentile(values, q), 1) for q in (50, 95, 99)} | {"n": len(values)}
        for kind, values in tally.latency_ms.items()
        if values
    }
    return {
        "seconds": round(seconds, 1),
        "requests": sum(tally.statuses.values()),
        "by_status": dict(sorted(tally.statuses.items())),
        "transport_errors": dict(tally.transport_errors),
        "responses_5xx": server_errors,
        "jobs_submitted": len(tally.submitted),
        "jobs_by_state": dict(sorted(tally.states.items())),
        "lost_jobs": len(lost),
        "lost_job_ids": lost[:20],
        "latency_ms": latency,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path, help="BEIR folder (corpus.jsonl, queries.jsonl)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=os.environ.get("QUARRY_API_KEY"))
    p.add_argument("--collection", default="load-test", help="where the ingesting clients write")
    p.add_argument(
        "--ask-collection", default=None, help="what the asking clients search (default: --collection)"
    )
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--askers", type=int, default=8)
    p.add_argument("--ingesters", type=int, default=2)
    p.add_argument("--docs-per-job", type=int, default=20)
    p.add_argument("--drain-s", type=float, default=300.0, help="how long submitted jobs may take to end")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    docs = [to_document(row) for row in read_jsonl(args.data_dir / "corpus.jsonl")][:2000]
    questions = [row["text"] for row in read_jsonl(args.data_dir / "queries.jsonl")]
    tally, start = Tally(), time.monotonic()
    asked = args.ask_collection or args.collection
    plan = Plan(args.collection, asked, start + args.minutes * 60, args.drain_s, args.docs_per_job)
    work = [(asker, questions)] * args.askers + [(ingester, docs)] * args.ingesters
    threads = [
        threading.Thread(target=role, args=(LoadClient(args.url, args.api_key, tally), plan, pool))
        for role, pool in work
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = report(tally, time.monotonic() - start)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["lost_jobs"] == 0 and result["responses_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
