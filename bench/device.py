"""How Quarry uses one device, side by side in one run, on private stacks of its own (`make bench`).

For each configuration (`--configs`; bench/device_report.py lists them) a private `make run` is started
(bench/device_stack.py: its own redis-server, milvus-lite, workers and API on free loopback ports, data in a
temp dir, all copied from one seed so each starts from the same state) and measured:
  (a) seconds from start to /readyz 200 and to the first answered question; the first question's latency
      after ready against the median of the next 9;
  (b) ingestion chunks/s through the API (`--docs` documents into a scratch collection), and the seconds a
      small job (40 documents, under one batch) takes, median of 5 in turn;
  (c) reranked and plain question p50/p95 at 1 client, idle and while a `--load-docs` ingest runs.
Once per run, in this process and with no stack running, the bare model on every core embeds the chunks
of (b), three passes back to back (their median is the figure). Nothing needs to be running first; no
port but free loopback ones is used.

    python -m bench.device ../shared/data/scifact-train            # every configuration, full size
    python -m bench.device ../shared/data/scifact-train --docs 60 --load-docs 120 --questions 5 \\
        --configs device,split                                      # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.device_measure import (
    INGEST_REQUEST_DOCS,
    NEXT_QUESTIONS,
    bare_all_cores,
    bare_around,
    bodies,
    idle,
    ingest_rate,
    small_jobs,
    under_ingest,
    warm_start,
)
from bench.device_report import build, configs, effective, select, table
from bench.device_stack import private_stack
from bench.eval_beir import Client, ingest, log, read_jsonl, to_document
from bench.perf import machine
from common.settings import Settings, get_settings
from devstack.processes import gpu_expected

ASK_COLLECTION = "bench-ask"
WARM_DOCS = 2  # the first ingest after start: as small as the (its model load shows)
SMALL_DOCS, SMALL_RUNS = 40, 5  # a small job, under one batch (64 documents), timed this many times
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Plan:
    """What every configuration is given: the same documents and questions, the same limits."""

    docs: list[dict[str, Any]]  # (b), and the bare model's chunks
    load_docs: list[dict[str, Any]]  # the ingest that runs under questions in (c)
    questions: list[str]  # (a) takes the first 10, (c) the rest
    idle_questions: int
    timeout_s: float
    ready_timeout_s: float
    load_questions: int = 0  # questions asked under the ingest (0: until it ends)


def machine_facts(settings: Settings) -> dict[str, Any]:
    """bench.perf's machine facts, and the CPU's native bf16 flags and load when the run began."""
    facts = machine(settings)
    facts.pop("torch_threads_per_worker", None)  # this process's; each configuration reports its own
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return facts | {
        "gpu": _gpu_name(),
        "cpu_flags": {flag: flag in flags for flag in BF16_FLAGS},
        "loadavg_at_start": list(os.getloadavg()),
    }


def _gpu_name() -> str | None:
    import torch  # noqa: PLC0415 - heavy: only this measurement loads it

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _effective(overrides: Mapping[str, str]) -> dict[str, Any]:
    """What a configuration amounts to here: on a GPU host the ingest worker is one process."""
    return effective(overrides, os.cpu_count() or 1, gpu=gpu_expected(get_settings()))


def seed(work: Path, docs: Sequence[dict[str, Any]], plan: Plan) -> Path:
    """Load the collection the questions ask on a stack of `make run`'s defaults; its data is each
    configuration's starting point (so the first question after start asks a real collection)."""
    with private_stack(work / "seed", {}) as stack:
        stack.wait_ready(plan.ready_timeout_s)
        ingest(Client(stack.url), docs, ASK_COLLECTION, INGEST_REQUEST_DOCS, plan.timeout_s)
    return work / "seed" / "data"


def measure(name: str, overrides: Mapping[str, str], work: Path, data: Path, plan: Plan) -> dict[str, Any]:
    """(a), (b) and (c) on a fresh stack of this configuration."""
    result: dict[str, Any] = {"settings": _effective(overrides) | {"env": dict(overrides)}}
    started = time.monotonic()
    first, rest = plan.questions[: 1 + NEXT_QUESTIONS], plan.questions[1 + NEXT_QUESTIONS :]
    modes = bodies(ASK_COLLECTION)
    with private_stack(work / name, overrides, seed=data) as stack:
        client = Client(stack.url)
        log(f"{name}: starting")
        result["startup"] = warm_start(
            stack,
            client,
            modes["reranked"],
            first,
            docs=plan.docs[:WARM_DOCS],
            timeout_s=plan.ready_timeout_s,
        )
        log(f"{name}: ready in {result['startup']['ready_s']:.1f} s; ingesting {len(plan.docs)} documents")
        result["ingest"] = ingest_rate(client, plan.docs, plan.timeout_s)
        log(f"{name}: {result['ingest']['chunks_per_s']:.1f} chunks/s; {SMALL_RUNS} small jobs")
        result["small_ingest"] = small_jobs(client, plan.docs[:SMALL_DOCS], SMALL_RUNS, plan.timeout_s)
        log(f"{name}: a small job in {result['small_ingest']['median_s']:.2f} s; questions, idle")
        result["idle"] = idle(client, modes, rest[: plan.idle_questions], plan.timeout_s)
        log(f"{name}: questions while {len(plan.load_docs)} documents are ingested")
        result["under_ingest"] = under_ingest(
            stack,
            client,
            docs=plan.load_docs,
            modes=modes,
            questions=rest,
            timeout_s=plan.timeout_s,
            max_questions=plan.load_questions,
        )
    result["wall_s"] = time.monotonic() - started
    return result


def run_all(
    chosen: Mapping[str, Mapping[str, str]], ask_docs: list[dict[str, Any]], plan: Plan, work: Path
) -> dict[str, Any]:
    """Every configuration in turn; one that fails is reported with its error and the rest still run."""
    data = seed(work, ask_docs, plan)
    results: dict[str, Any] = {}
    for name, overrides in chosen.items():
        try:
            results[name] = measure(name, overrides, work, data, plan)
        except Exception as exc:
            log(f"{name}: failed: {exc!r} (logs: {work / name})")
            results[name] = {"settings": _effective(overrides), "error": repr(exc)}
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.device", description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path, nargs="?", default=Path("../shared/data/scifact-train"))
    p.add_argument("--configs", default=",".join(configs(1)), help="comma-separated (default: all)")
    p.add_argument("--docs", type=int, default=1000, help="documents of the ingestion rate (b)")
    p.add_argument("--load-docs", type=int, default=1500, help="documents ingested under questions (c)")
    p.add_argument("--ask-docs", type=int, default=1000, help="documents of the collection questions ask")
    p.add_argument("--questions", type=int, default=30, help="idle questions per mode (c)")
    p.add_argument(
        "--load-questions",
        type=int,
        default=60,
        help="questions (modes in turn) asked under the ingest in (c), then its end is awaited; 0: ask until "
        "it ends (questions go first, so on a CPU that stretches a 1,500-document ingest to half an hour)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="max seconds for one job")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="max seconds from start to ready")
    p.add_argument("--tmp", type=Path, default=None, help="where the temp dir goes (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (stack data and logs)")
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    p.add_argument("--json", type=Path, default=Path(f"bench/results/device-{day}.json"))
    args = p.parse_args(argv)
    if min(args.docs, args.load_docs, args.ask_docs, args.questions) < 1:
        p.error("--docs, --load-docs, --ask-docs and --questions must be at least 1")
    return args


def make_plan(args: argparse.Namespace) -> tuple[Plan, list[dict[str, Any]]]:
    """The documents and questions of the run, read once; and the documents of the asked collection."""
    wanted = max(args.docs, args.load_docs, args.ask_docs)
    corpus = [to_document(r) for r in itertools.islice(read_jsonl(args.data_dir / "corpus.jsonl"), wanted)]
    questions = [row["text"] for row in read_jsonl(args.data_dir / "queries.jsonl")]
    plan = Plan(
        corpus[: args.docs],
        corpus[: args.load_docs],
        questions,
        args.questions,
        args.timeout,
        args.ready_timeout,
        args.load_questions,
    )
    return plan, corpus[: args.ask_docs]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # `timeout`, `kill`: unwind, so that every stack started is stopped (they run in sessions of their own)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    try:
        chosen = select(args.configs, os.cpu_count() or 1)
    except ValueError as exc:
        log(f"error: {exc}")
        return 2
    started = time.monotonic()
    plan, ask_docs = make_plan(args)
    settings = get_settings()
    facts = machine_facts(settings)
    log(f"bare model on all cores: {len(plan.docs)} documents")
    before = bare_all_cores(plan.docs, settings)
    work = Path(tempfile.mkdtemp(prefix="quarry-devbench-", dir=args.tmp))
    results: dict[str, Any] = {}
    try:
        results = run_all(chosen, ask_docs, plan, work)
    finally:
        failed = not results or any("error" in r for r in results.values())
        if args.keep or failed:
            log(f"stack data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log("bare model on all cores again, after the stacks")
    bare = bare_around(before, bare_all_cores(plan.docs, settings))
    report = build(facts, {k: str(v) for k, v in vars(args).items()}, bare, results)
    report["wall_s"] = time.monotonic() - started
    print(table(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"written to {args.json} ({report['wall_s']:.0f} s in all)")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
