"""Chaos run: mixed ingest, replace, delete and ask load while processes are killed at random; then a verdict.

`python -m bench.chaos --seconds 300 --seed 1` starts a stack of its own (loopback only: private
redis-server and milvus-lite on free ports, two ingest worker processes, the fault tests' shrunk settings),
drives it for `--seconds` (or `--max-requests`), SIGKILLs ingest worker children and whole workers, the
ask worker, milvus-lite and redis-server meanwhile (`bench.chaos_faults`), then stops the faults and waits
(bounded) for every accepted job to end. The verdict (`bench.chaos_check`): no job stuck or lost, and
Milvus holding, per document, exactly one whole version the job outcomes allow; no duplicate, no orphan.
Exit code 0 when it holds. Logs and data stay in the printed directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.chaos_check import expected_rows, job_violations, judge, read_rows
from bench.chaos_faults import KINDS, Injector
from bench.chaos_load import TERMINAL, Load, Op, Universe, fetch_reports, observe
from bench.chaos_stack import MILVUS_COLLECTION, chaos_stack
from common.settings import Settings
from devstack.processes import wait_until


@dataclass
class Options:
    seconds: float = 300
    seed: int = 1
    max_requests: int = 5000
    clients: int = 3
    max_in_flight: int = 8
    fault_every: tuple[float, float] = (3.0, 8.0)
    settle_s: float = 180
    collections: int = 3
    docs: int = 6
    only: list[str] = field(default_factory=list)  # fault kinds to draw from (empty: every kind)
    down_s: tuple[float, float] = (0.2, 2.0)  # a killed process stays down this long before its restart


@dataclass
class Result:
    counts: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    logs: str = ""

    @property
    def passed(self) -> bool:
        return not self.violations


def run(options: Options, tmp: Path) -> Result:
    """The whole run on a fresh stack under `tmp`; returns counts and violations (also printed)."""
    universe = Universe.make(options.collections, options.docs)
    with chaos_stack(tmp) as fs:
        expected = expected_rows(universe, *_embedder())
        load = Load(fs.url, universe, options.seed)
        load.requests_left = options.max_requests
        kinds = (
            {kind: copies for kind, copies in KINDS.items() if kind in options.only}
            if options.only
            else KINDS
        )
        injector = Injector(
            fs,
            options.seed + 1,
            options.fault_every,
            lambda: _open_jobs(load),
            kinds=kinds,
            down_s=options.down_s,
        )
        t0 = time.time()
        load_end = _drive(load, injector, options) - t0
        _final_read(fs.url, load.ops)
        rows = read_rows(fs.milvus_uri, MILVUS_COLLECTION)
        verdict = judge(load.ops, rows, expected, t0)
        result = Result(logs=str(fs.logs))
        crashes = [
            f"crashed: {name} exited by itself (code {code}) at t={at - t0:.1f}; restarted"
            for at, name, code in injector.crashes
        ]
        errors = [  # a dependency down is a 503; anything else >= 500 is a bug
            f"answered {code}: {op.kind} on {op.collection} t={op.started - t0:.1f}"
            for op in load.ops
            for code in op.http
            if code >= 500 and code != 503
        ]
        result.violations = crashes + errors + job_violations(load.ops, t0) + verdict.violations
        result.faults = [f"t={at - t0:.1f} {kind}: {detail}" for at, kind, detail in injector.log]
        result.counts = _counts(load.ops, injector.counts, verdict.documents, verdict.chunks)
        result.counts["crashes"] = dict(Counter(name for _at, name, _code in injector.crashes))
        result.counts["documents_present"] = verdict.present
        result.counts["documents_with_one_allowed_end"] = verdict.determinate
        result.counts["seconds"] = {"load": round(load_end, 1), "total": round(time.time() - t0, 1)}
    return result


def _drive(load: Load, injector: Injector, options: Options) -> float:
    """Load and faults for `options.seconds`, then no faults and a bounded wait for every job to end;
    returns when the load stopped."""
    watch_stop = threading.Event()
    threads = [
        threading.Thread(target=load.submitter, args=(options.max_in_flight,), daemon=True)
        for _ in range(options.clients)
    ]
    watcher = threading.Thread(target=_watch, args=(load, watch_stop), daemon=True)
    faults = threading.Thread(target=injector.run, daemon=True)
    for thread in [*threads, watcher, faults]:
        thread.start()
    _load_phase(load, threads, options.seconds)
    injector.stop.set()
    faults.join()
    injector.revive_crashed()
    for thread in threads:
        thread.join()
    load_end = time.time()
    wait_until(injector.fs.healthy, 120, "the stack after the faults")
    _settle(load, options.settle_s)
    injector.revive_crashed()  # a crash during the settle phase counts too
    watch_stop.set()
    watcher.join()
    return load_end


def _embedder() -> tuple[Any, Settings]:
    """The service's embedder (its tokenizer chunks), from the same settings the workers read."""
    from workers.embedder import load_embedder  # noqa: PLC0415 - heavy: only this measurement loads it

    settings = Settings()
    return load_embedder(settings), settings


def _open_jobs(load: Load) -> list[str]:
    with load.lock:
        return [op.job_id for op in load.ops if op.job_id and op.first_end is None and op.kind != "ask"]


def _watch(load: Load, stop: threading.Event) -> None:
    session = requests.Session()
    while not stop.is_set():
        with load.lock:
            pending = [op for op in load.ops if op.status == "accepted" and op.first_end is None]
        for op in pending:
            observe(session, load.url, op)
        stop.wait(0.2)


def _load_phase(load: Load, threads: list[threading.Thread], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(thread.is_alive() for thread in threads):
        time.sleep(0.5)
    load.stop.set()


def _settle(load: Load, bound_s: float) -> None:
    """Wait (bounded) for every accepted job to end; what is still open afterwards is stuck."""
    deadline = time.monotonic() + bound_s
    while load.in_flight() and time.monotonic() < deadline:
        time.sleep(0.5)


def _final_read(url: str, ops: list[Op]) -> None:
    """Read each job's state once more (a changed end is a violation) and each ingest job's reports."""
    session = requests.Session()
    for op in ops:
        if op.status != "accepted":
            continue
        for _attempt in range(20):
            body = observe(session, url, op)
            if body is not None:
                op.final = body["state"]
                break
            time.sleep(0.5)
        if op.kind in ("ingest", "replace") and op.final in TERMINAL:
            for _attempt in range(20):
                if fetch_reports(session, url, op):
                    break
                time.sleep(0.5)


def _counts(ops: list[Op], faults: Counter[str], documents: int, chunks: int) -> dict[str, Any]:
    accepted = [op for op in ops if op.status == "accepted"]
    finals = Counter(op.final or "unreadable" for op in accepted)
    reports = Counter(r["status"] for op in accepted for r in op.reports.values())
    return {
        "jobs": {
            "submitted": len(ops),
            "accepted": len(accepted),
            "refused": sum(op.status == "refused" for op in ops),
            "unresolved": sum(op.status == "unresolved" for op in ops),
            "succeeded": finals["succeeded"],
            "failed": finals["failed"],
            "cancelled": finals["cancelled"],
            "stuck": finals["queued"] + finals["running"],
            "unreadable": finals["unreadable"],
        },
        "accepted_by_kind": dict(Counter(op.kind for op in accepted)),
        "document_outcomes": dict(reports),
        "http_answers": dict(sorted(Counter(str(code) for op in ops for code in op.http).items())),
        "faults": dict(faults),
        "documents_checked": documents,
        "chunks_checked": chunks,
    }


def report(result: Result) -> None:
    print(json.dumps(result.counts, indent=2))
    print(f"faults injected ({len(result.faults)}):")
    for line in result.faults:
        print("  " + line)
    print(f"violations: {len(result.violations)}")
    for line in result.violations:
        print("  " + line)
    print(f"logs: {result.logs}")
    print("VERDICT: " + ("PASS" if result.passed else "FAIL"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=300, help="how long the load and faults run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=5000, help="stop the load after this many")
    parser.add_argument("--settle", type=float, default=180, help="longest wait for jobs to end afterwards")
    parser.add_argument("--json", type=Path, help="write the counts and violations here too")
    parser.add_argument("--only", action="append", choices=sorted(KINDS), default=[], help="only this fault")
    spans = {
        "--down": "seconds a killed process stays down before its restart (longer than "
        "JOB_HEARTBEAT_TIMEOUT_S, 8 s here, lets every lock expire)",
        "--every": "seconds from one fault to the next",
    }
    for flag, default in (("--down", Options.down_s), ("--every", Options.fault_every)):
        parser.add_argument(
            flag, type=float, nargs=2, default=default, metavar=("MIN", "MAX"), help=spans[flag]
        )
    args = parser.parse_args(argv)
    options = Options(
        seconds=args.seconds,
        seed=args.seed,
        max_requests=args.max_requests,
        settle_s=args.settle,
        only=args.only,
        down_s=tuple(args.down),
        fault_every=tuple(args.every),
    )
    tmp = Path(tempfile.mkdtemp(prefix="quarry-chaos-"))
    result = run(options, tmp)
    report(result)
    if args.json:
        args.json.write_text(json.dumps({"counts": result.counts, "violations": result.violations}, indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
