"""Measure Quarry's retrieval quality on a BEIR dataset through the running service's HTTP API.

Black-box on purpose: it exercises the same path a client does (ingest jobs, ask jobs, long
polls), so quality and latency numbers include queueing, chunking and reranking as deployed.

    python -m bench.eval_beir /work/shared/data/scifact-train --split train \
        --url http://127.0.0.1:8000 --collection scifact --concurrency 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.metrics import Qrels, dedupe, evaluate, percentile

API = "/api/v1"
TERMINAL_STATES = ("succeeded", "failed")
POLL_WAIT_S = 30  # the server caps ?wait= at 30 s
HTTP_TIMEOUT_S = (10, POLL_WAIT_S + 30)  # (connect, read): a long poll must not look like a hang
MAX_BATCH_BYTES = 20 * 1024 * 1024  # well under the ~50 MB request limit (413)
RETRYABLE = (429, 503)  # refused before any work was done, so re-sending cannot duplicate a job
ATTEMPTS = 4


class ApiError(RuntimeError):
    """A non-2xx answer, carrying the problem+json `detail` so the failure is readable."""


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a JSON-lines file so a large corpus is never held twice in memory."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def parse_qrels(lines: Iterable[str]) -> dict[str, dict[str, int]]:
    """Parse BEIR qrels TSV (query-id, corpus-id, score); a non-numeric first line is the header."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(lines):
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 3 or not parts[0]:
            continue
        try:
            score = int(float(parts[2]))
        except ValueError:
            if n == 0:
                continue
            raise ValueError(f"qrels line {n + 1}: bad score {parts[2]!r}") from None
        qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def to_document(row: dict[str, Any]) -> dict[str, Any]:
    """Map a BEIR corpus row to the API's document shape (ids are strings in BEIR qrels)."""
    return {
        "id": str(row["_id"]),
        "text": row.get("text") or "",
        "title": row.get("title") or "",
        "metadata": {},
    }


def batches(docs: Iterable[dict[str, Any]], max_docs: int, max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """Group documents into requests bounded by count and by approximate JSON size (avoids 413)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for doc in docs:
        doc_bytes = len(json.dumps(doc).encode()) + 2
        if batch and (len(batch) >= max_docs or size + doc_bytes > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(doc)
        size += doc_bytes
    if batch:
        yield batch


def select_queries(queries: dict[str, str], qrels: Qrels, limit: int | None) -> list[tuple[str, str]]:
    """Judged queries that have text, in the queries file's order, truncated to `limit`."""
    picked = [(qid, text) for qid, text in queries.items() if qid in qrels]
    return picked[:limit] if limit is not None else picked


def _problem_detail(resp: requests.Response) -> str:
    """Best human-readable message from an error response (problem+json `detail` if present)."""
    try:
        body = resp.json()
        detail = body.get("detail") or body.get("title") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    return f"HTTP {resp.status_code} {resp.request.method} {resp.url}: {detail or resp.text[:300]}"


class _ThreadSession(threading.local):
    """Each thread sees its own `session`, created on that thread's first access."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.session = requests.Session()
        self.session.headers.update(headers)


class Client:
    """Minimal Quarry API client; one `requests.Session` per thread (sessions are not thread-safe)."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base = base_url.rstrip("/") + API
        self._local = _ThreadSession({"Authorization": f"Bearer {api_key}"} if api_key else {})

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send with a few retries: 429/503 always, connection errors only for idempotent GETs."""
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                resp = self._local.session.request(method, self.base + path, timeout=HTTP_TIMEOUT_S, **kwargs)
            except requests.ConnectionError:
                if method != "GET" or last:
                    raise
                time.sleep(2**attempt)
                continue
            if resp.status_code in RETRYABLE and not last:
                retry_after = resp.headers.get("Retry-After", "")
                time.sleep(int(retry_after) if retry_after.isdigit() else 2**attempt)
                continue
            if resp.status_code >= 400:
                raise ApiError(_problem_detail(resp))
            body: dict[str, Any] = resp.json()
            return body
        raise AssertionError("unreachable")

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self._request("GET", path, params=params or None)

    def delete(self, path: str) -> str:
        """A DELETE that starts a job (a collection or its documents); returns the job id."""
        return str(self._request("DELETE", path)["job_id"])

    def submit(self, path: str, body: dict[str, Any]) -> str:
        """POST a job-creating request and return the job id."""
        return str(self._request("POST", path, json=body)["job_id"])

    def wait(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        """Long-poll a job until it is succeeded or failed; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            polled = time.monotonic()
            wait = max(1, min(POLL_WAIT_S, int(deadline - polled)))
            job = self._request("GET", f"/jobs/{job_id}", params={"wait": wait})
            if job.get("state") in TERMINAL_STATES:
                return job
            time.sleep(max(0.0, 0.2 - (time.monotonic() - polled)))  # no busy loop if ?wait is ignored
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.get('state')!r} after {timeout_s:.0f} s")


def ingest(
    client: Client, docs: Iterable[dict[str, Any]], collection: str, batch_size: int, timeout_s: float
) -> int:
    """Submit documents in batches (one job each), wait for all, and raise if any job failed."""
    jobs, n_docs = submit_documents(client, docs, collection, batch_size)
    log(f"ingest: {n_docs} documents submitted as {len(jobs)} jobs; waiting")
    wait_jobs(client, jobs, timeout_s)
    return n_docs


def submit_documents(
    client: Client, docs: Iterable[dict[str, Any]], collection: str, batch_size: int
) -> tuple[list[str], int]:
    """Submit documents in batches of at most `batch_size` (and MAX_BATCH_BYTES), one job each; the job ids
    and how many documents they carry."""
    jobs: list[str] = []
    n_docs = 0
    for batch in batches(docs, batch_size, MAX_BATCH_BYTES):
        jobs.append(client.submit("/documents", {"collection": collection, "documents": batch}))
        n_docs += len(batch)
    return jobs, n_docs


def wait_jobs(client: Client, jobs: Sequence[str], timeout_s: float) -> None:
    """Wait for every ingest job; raise, naming the failures, if any job failed."""
    failures = []
    for i, job_id in enumerate(jobs, start=1):
        job = client.wait(job_id, timeout_s)
        if job["state"] != "succeeded":
            failures.append(f"job {job_id}: {job.get('error')}")
        log(f"ingest: job {i}/{len(jobs)} {job['state']}")
    if failures:
        shown = "\n  ".join(failures[:10])
        raise RuntimeError(f"{len(failures)}/{len(jobs)} ingest jobs failed:\n  {shown}")


@dataclass
class AskOutcome:
    """One query's result: ranked document ids (deduplicated) or the reason it failed."""

    qid: str
    doc_ids: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    error: str | None = None


def ask(client: Client, qid: str, question: str, body: dict[str, Any], timeout_s: float) -> AskOutcome:
    """Submit one question and long-poll it; latency spans submit to terminal state."""
    start = time.perf_counter()
    try:
        job = client.wait(client.submit("/ask", {"question": question, **body}), timeout_s)
    except (ApiError, TimeoutError, requests.RequestException) as exc:
        return AskOutcome(qid, error=f"{type(exc).__name__}: {exc}")
    latency_ms = (time.perf_counter() - start) * 1000
    if job["state"] != "succeeded":
        return AskOutcome(qid, latency_ms=latency_ms, error=f"job failed: {job.get('error')}")
    passages = (job.get("result") or {}).get("passages") or []
    return AskOutcome(qid, dedupe(str(p["doc_id"]) for p in passages), latency_ms)


def ask_all(
    client: Client, queries: list[tuple[str, str]], body: dict[str, Any], concurrency: int, timeout_s: float
) -> list[AskOutcome]:
    """Ask every query with `concurrency` requests in flight; never raises for a single query."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(ask, client, qid, text, body, timeout_s) for qid, text in queries]
        outcomes = []
        for i, future in enumerate(futures, start=1):
            outcomes.append(future.result())
            if i % 100 == 0 or i == len(futures):
                log(f"ask: {i}/{len(futures)} done")
    return outcomes


def summarize(outcomes: list[AskOutcome], qrels: Qrels) -> dict[str, Any]:
    """Metrics (percent) and latency over the asked queries; failed asks score as empty rankings."""
    asked = {o.qid for o in outcomes}
    run = {o.qid: o.doc_ids for o in outcomes if o.error is None}
    means, n_eval = evaluate(run, {qid: rels for qid, rels in qrels.items() if qid in asked})
    latencies = [o.latency_ms for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    return {
        "metrics_pct": {name: round(100 * value, 4) for name, value in means.items()},
        "queries_evaluated": n_eval,
        "queries_asked": len(outcomes),
        "failed_asks": len(failed),
        "failure_examples": [f"{o.qid}: {o.error}" for o in failed[:5]],
        "latency_ms": {f"p{q}": percentile(latencies, q) if latencies else None for q in (50, 95)},
        "run": run,  # each query's ranked doc ids, so two runs can be compared query by query
    }


LABELS = {"ndcg@10": "nDCG@10", "recall@10": "Recall@10", "recall@100": "Recall@100", "mrr@10": "MRR@10"}


def _fmt(value: float | None, unit: str, digits: int) -> str:
    """A number with its unit, or n/a when nothing was measured (e.g. every ask failed)."""
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def format_table(report: dict[str, Any]) -> str:
    """A small aligned two-column table for the terminal."""
    rows = [(LABELS.get(name, name), _fmt(value, "%", 2)) for name, value in report["metrics_pct"].items()]
    ingest_s, latency = report["ingest_wall_time_s"], report["latency_ms"]
    rows += [
        ("queries evaluated", str(report["queries_evaluated"])),
        ("failed asks", str(report["failed_asks"])),
        ("ask latency p50", _fmt(latency["p50"], "ms", 0)),
        ("ask latency p95", _fmt(latency["p95"], "ms", 0)),
        ("total wall time", _fmt(report["wall_time_s"], "s", 1)),
        ("ingest wall time", "skipped" if ingest_s is None else _fmt(ingest_s, "s", 1)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value:>12}" for label, value in rows)


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the result table."""
    print(message, file=sys.stderr, flush=True)


def stage_switches(args: argparse.Namespace) -> dict[str, Any]:
    """The ask options a run sets; anything left out takes the server's default."""
    switches = {
        "rerank": args.rerank,
        "reranker": args.reranker,
        "mode": args.mode,
        "ef": args.ef,
        "rrf_k": args.rrf_k,
        "candidates": args.candidates,
        "exact": args.exact or None,
        "documents": args.documents,
        "idf": args.idf,
    }
    return {key: value for key, value in switches.items() if value is not None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --rerank is tri-state (None = let the server decide)."""
    p = argparse.ArgumentParser(prog="python -m bench.eval_beir", description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path, help="BEIR folder with corpus.jsonl, queries.jsonl, qrels/")
    p.add_argument("--split", default="test", help="qrels/<split>.tsv to evaluate (default: test)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=os.environ.get("QUARRY_API_KEY"), help="default: $QUARRY_API_KEY")
    p.add_argument("--collection", default="beir")
    p.add_argument("--skip-ingest", action="store_true", help="assume the collection is already loaded")
    p.add_argument("--concurrency", type=int, default=4, help="asks in flight")
    p.add_argument("--top-k", type=int, default=100, help="passages per ask (1..100)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--reranker", choices=("maxsim", "cross-encoder"), help="reranker backend")
    p.add_argument(
        "--mode", choices=("dense", "bm25", "hybrid"), help="retrieval mode (server default: hybrid)"
    )
    p.add_argument("--exact", action="store_true", help="brute-force dense search (with --mode dense)")
    p.add_argument("--ef", type=int, help="HNSW search ef")
    p.add_argument("--rrf-k", type=int, help="RRF k of the hybrid fusion")
    p.add_argument("--candidates", type=int, help="candidates the reranker sees")
    p.add_argument(
        "--documents",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each document once, at its best chunk, before reranking (server default: settings)",
    )
    p.add_argument(
        "--idf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MaxSim weighs question tokens by their IDF in the collection (server default: settings)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N judged queries")
    p.add_argument("--batch-size", type=int, default=1000, help="documents per ingest request")
    p.add_argument("--job-timeout", type=float, default=1800.0, help="max seconds to wait for one job")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    if not 1 <= args.top_k <= 100 or args.concurrency < 1 or args.batch_size < 1:
        p.error("need 1 <= --top-k <= 100, --concurrency >= 1, --batch-size >= 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Ingest (unless skipped), ask every judged query, and build the report."""
    started = time.perf_counter()
    qrels_path = args.data_dir / "qrels" / f"{args.split}.tsv"
    qrels = parse_qrels(qrels_path.read_text(encoding="utf-8").splitlines())
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(args.data_dir / "queries.jsonl")}
    if missing := len(set(qrels) - set(queries)):
        log(f"warning: {missing} judged queries have no text in queries.jsonl and are skipped")
    selected = select_queries(queries, qrels, args.limit)
    client = Client(args.url, args.api_key)
    ingest_s = None
    if not args.skip_ingest:
        t0 = time.perf_counter()
        docs = (to_document(row) for row in read_jsonl(args.data_dir / "corpus.jsonl"))
        ingest(client, docs, args.collection, args.batch_size, args.job_timeout)
        ingest_s = time.perf_counter() - t0
    body: dict[str, Any] = {"top_k": args.top_k, "collection": args.collection}
    body |= stage_switches(args)
    log(f"ask: {len(selected)} queries, concurrency {args.concurrency}")
    t0 = time.perf_counter()
    report = summarize(ask_all(client, selected, body, args.concurrency, args.job_timeout), qrels)
    report["ask_wall_time_s"] = time.perf_counter() - t0
    report["ingest_wall_time_s"] = ingest_s
    report["wall_time_s"] = time.perf_counter() - started
    report["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 0 if every ask succeeded, 1 if some failed, 2 if the run itself failed."""
    args = parse_args(argv)
    try:
        report = run(args)
    except (ApiError, RuntimeError, OSError, requests.RequestException) as exc:
        log(f"error: {exc}")
        return 2
    print(format_table(report))
    for example in report["failure_examples"]:
        log(f"failed ask {example}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if report["failed_asks"] else 0


if __name__ == "__main__":
    sys.exit(main())
