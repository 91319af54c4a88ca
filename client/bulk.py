"""Bulk ingest from the command line: upload files in batches, follow the jobs, report what failed.

Talks to the API only through `client.http`, never to Celery or Milvus, and imports nothing of the server
(no torch): it runs on any machine that can reach the service. `python -m client ingest` runs it;
`python -m ingestion`, its former name, still does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from client.http import Job, QuarryClient, QuarryError

MIB = 1024 * 1024
EXIT_OK, EXIT_DOCUMENTS_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
WAIT_THREADS = 8
"""Jobs followed at once; below requests' default pool size of 10 connections per host."""
OUTCOMES = ("succeeded", "failed", "skipped")
CSV_COLUMNS = ("text_column", "id_column", "title_column")


class LoaderError(Exception):
    """Ends the run with exit code 2: bad paths, clashing names, an upload the server refused."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client ingest", description="Bulk-ingest files into Quarry."
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--api", required=True, metavar="URL", help="e.g. http://localhost:8000")
    parser.add_argument("--api-key", default=os.environ.get("QUARRY_API_KEY"), help="or $QUARRY_API_KEY")
    parser.add_argument("--on-duplicate", choices=("skip", "replace", "error"))
    parser.add_argument("--batch-files", type=int, default=200, help="files per upload (200)")
    parser.add_argument("--batch-mb", type=float, default=50.0, help="MiB per upload (50)")
    for column in ("text", "id", "title"):
        parser.add_argument(f"--{column}-column", help=f"CSV column holding the document {column}")
    parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    parser.add_argument("--no-wait", action="store_true", help="print the job ids and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON summary object")
    return parser


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files to upload, sorted and de-duplicated; directories recurse, skipping hidden files and dirs."""
    found: dict[Path, Path] = {}
    for path in paths:
        if path.is_dir():
            for file in _walk(path):
                found.setdefault(file.resolve(), file)
        elif path.is_file():
            found.setdefault(path.resolve(), path)
        else:
            raise LoaderError(f"{path}: no such file or directory")
    return sorted(found.values())


def _walk(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        yield from (Path(root, name) for name in files if not name.startswith("."))


def check_unique_names(files: Sequence[Path]) -> None:
    """The server names a file's document after its base name, so two a/x.md and b/x.md would collide."""
    by_name: dict[str, list[Path]] = defaultdict(list)
    for file in files:
        by_name[file.name].append(file)
    clashes = [paths for paths in by_name.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(", ".join(map(str, paths)) for paths in clashes[:5])
        raise LoaderError(
            f"files share a name, which is their document id: {shown}; rename or upload separately"
        )


def plan_uploads(files: Sequence[Path], *, max_files: int, max_bytes: int) -> list[list[Path]]:
    """Group files, in order, into uploads of at most `max_files` files and `max_bytes` bytes.

    A file larger than `max_bytes` (a big .jsonl, .zip or .csv) goes alone: the server enforces its own limit.
    """
    batches: list[list[Path]] = []
    current: list[Path] = []
    size = 0
    for file in files:
        file_size = file.stat().st_size
        if current and (len(current) >= max_files or size + file_size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(file)
        size += file_size
    if current:
        batches.append(current)
    return batches


def upload_batches(client: QuarryClient, batches: list[list[Path]], args: argparse.Namespace) -> list[str]:
    """One ingest job per batch; stops at the first rejected upload (earlier jobs keep running)."""
    csv_options = {name: value for name in CSV_COLUMNS if (value := getattr(args, name)) is not None}
    job_ids: list[str] = []
    for number, batch in enumerate(batches, start=1):
        try:
            job_id = client.upload_files(
                batch, collection=args.collection, on_duplicate=args.on_duplicate, csv_options=csv_options
            )
        except (QuarryError, requests.RequestException, OSError) as exc:
            started = f"; jobs already submitted: {', '.join(job_ids)}" if job_ids else ""
            raise LoaderError(
                f"upload {number}/{len(batches)} ({batch[0]} …) failed: {exc}{started}"
            ) from exc
        job_ids.append(job_id)
        if not args.json:
            print(f"uploaded {number}/{len(batches)}: {len(batch)} files -> job {job_id}", file=sys.stderr)
    return job_ids


class ProgressBar:
    """One tqdm bar over all jobs: each update replaces that job's last reported counters."""

    def __init__(self, *, enabled: bool) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._bar = tqdm(total=0, unit="doc", desc="ingest", disable=None if enabled else True)

    def update(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.job_id] = job
            totals = sum_progress(self._jobs.values())
            self._bar.total = totals["total"]
            self._bar.n = sum(totals[key] for key in OUTCOMES)
            self._bar.set_postfix(
                {key: totals[key] for key in ("failed", "skipped", "chunks")}, refresh=False
            )
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def sum_progress(jobs: Iterable[Job]) -> dict[str, int]:
    """Totals of total/succeeded/failed/skipped/chunks over jobs.

    The API contract counts successes in `done`; servers that also send `succeeded` count every
    processed document in `done` instead. Both read the same here.
    """
    totals = dict.fromkeys(("total", *OUTCOMES, "chunks"), 0)
    for job in jobs:
        counts = {key: value for key, value in job.progress.items() if isinstance(value, int)}
        counts.setdefault("succeeded", counts.get("done", 0))
        for key in totals:
            totals[key] += counts.get(key, 0)
    return totals


def wait_for_jobs(
    client: QuarryClient, job_ids: Sequence[str], bar: ProgressBar, timeout: float | None
) -> dict[str, Job | Exception]:
    """Follow every job to the end in a few daemon threads (Ctrl-C stays responsive), feeding the bar."""
    for job_id in job_ids:  # a first snapshot, so the bar's total covers every job from the start
        with contextlib.suppress(QuarryError, requests.RequestException):  # wait() retries or reports it
            bar.update(client.job(job_id))
    pending: queue.SimpleQueue[str] = queue.SimpleQueue()
    for job_id in job_ids:
        pending.put(job_id)
    outcomes: dict[str, Job | Exception] = {}
    follow_args = (client, pending, outcomes, bar, timeout)
    threads = [
        threading.Thread(target=_follow, args=follow_args, daemon=True)
        for _ in range(min(WAIT_THREADS, len(job_ids)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    return outcomes


def _follow(
    client: QuarryClient,
    pending: queue.SimpleQueue[str],
    outcomes: dict[str, Job | Exception],
    bar: ProgressBar,
    timeout: float | None,
) -> None:
    """Worker thread: wait for queued jobs until none are left; record each final Job or the error."""
    while True:
        try:
            job_id = pending.get_nowait()
        except queue.Empty:
            return
        try:
            outcomes[job_id] = client.wait(job_id, timeout=timeout, on_update=bar.update)
        except (QuarryError, requests.RequestException, TimeoutError) as exc:
            outcomes[job_id] = exc


@dataclass
class Summary:
    """What a run achieved; the exit code and both output formats derive from it."""

    jobs: list[Job] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed_documents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_ERROR
        return EXIT_DOCUMENTS_FAILED if sum_progress(self.jobs)["failed"] else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        totals = sum_progress(self.jobs)
        return {
            "documents": {key: totals[key] for key in OUTCOMES},
            "chunks": totals["chunks"],
            "jobs": [{"job_id": job.job_id, "state": job.state, "error": job.error} for job in self.jobs],
            "failed_documents": self.failed_documents,
            "errors": self.errors,
            "exit_code": self.exit_code,
        }


def summarize(client: QuarryClient, job_ids: Sequence[str], outcomes: dict[str, Job | Exception]) -> Summary:
    """Collect final counters, whole-job failures and every failed document's reason."""
    summary = Summary()
    for job_id in job_ids:
        outcome = outcomes.get(job_id, RuntimeError("no outcome recorded"))
        if isinstance(outcome, Exception):
            summary.errors.append(f"job {job_id}: could not follow it: {outcome}")
            continue
        summary.jobs.append(outcome)
        if outcome.state != "succeeded":
            summary.errors.append(f"job {job_id} {outcome.state}: {outcome.error or 'no reason given'}")
        if outcome.progress.get("failed"):
            _collect_failures(client, outcome.job_id, summary)
    return summary


def _collect_failures(client: QuarryClient, job_id: str, summary: Summary) -> None:
    try:
        for item in client.job_documents(job_id, status="failed"):
            failure = {"job_id": job_id, "doc_id": item.get("doc_id"), "reason": item.get("reason")}
            summary.failed_documents.append(failure)
    except (QuarryError, requests.RequestException) as exc:
        summary.errors.append(f"job {job_id}: could not list its failed documents: {exc}")


def print_summary(summary: Summary, *, collection: str) -> None:
    data = summary.to_json()
    docs = data["documents"]
    print(
        f"{collection}: {docs['succeeded']} documents succeeded, {docs['failed']} failed, "
        f"{docs['skipped']} skipped; {data['chunks']} chunks written; {len(summary.jobs)} jobs"
    )
    if summary.failed_documents:
        print("Failed documents:")
        for item in summary.failed_documents:
            print(f"  {item['doc_id']}: {item.get('reason') or 'no reason given'}")
    for error in summary.errors:
        print(f"error: {error}")


def run(args: argparse.Namespace) -> int:
    """Plan, upload, follow, report; raises LoaderError (and client errors) for exit code 2."""
    files = expand_paths(args.paths)
    if not files:
        raise LoaderError("no files found (hidden files and directories are skipped)")
    check_unique_names(files)
    batches = plan_uploads(files, max_files=args.batch_files, max_bytes=int(args.batch_mb * MIB))
    client = QuarryClient(args.api, api_key=args.api_key)
    job_ids = upload_batches(client, batches, args)
    if args.no_wait:
        print(
            json.dumps({"jobs": [{"job_id": job_id} for job_id in job_ids]})
            if args.json
            else "\n".join(job_ids)
        )
        return EXIT_OK
    bar = ProgressBar(enabled=not args.json)
    try:
        outcomes = wait_for_jobs(client, job_ids, bar, args.timeout)
    finally:
        bar.close()
    summary = summarize(client, job_ids, outcomes)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print_summary(summary, collection=args.collection)
    return summary.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m client ingest`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_files < 1 or args.batch_mb <= 0 or (args.timeout is not None and args.timeout < 0):
        parser.error("--batch-files and --batch-mb must be positive, --timeout not negative")
    try:
        return run(args)
    except (LoaderError, QuarryError, requests.RequestException) as exc:
        if args.json:  # scripts always get one JSON object on stdout
            print(json.dumps({"errors": [str(exc)], "exit_code": EXIT_ERROR}))
        else:
            print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; submitted jobs keep running on the server", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_ERROR
