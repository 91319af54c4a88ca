"""Quarry's speed, measured side by side in one run against the running service (`make bench`).

1. ingestion: chunks/s through the API beside the bare model and a naive encode-and-insert loop;
2. ask: latency p50/p95/p99 and questions/s at several client counts, beside the in-process pipeline;
3. search: HNSW recall@10 against exact search and latency at three `ef` values.

    python -m bench.perf ../shared/data/scifact-train --url http://127.0.0.1:8000 \\
        --collection scifact --docs 1000 --json bench/results/latest.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench import perf_ask, perf_ingest, perf_search
from bench.eval_beir import Client, read_jsonl, to_document
from common.settings import Settings, get_settings


def machine(settings: Settings) -> dict[str, Any]:
    """What the figures were measured on."""
    import torch  # noqa: PLC0415 - heavy: only this measurement loads it

    from workers.device import choose_device  # noqa: PLC0415 - heavy: only this measurement loads it

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    config = choose_device(settings)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": config.device,
        "dtype": str(config.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "torch_threads_per_worker": settings.threads_per_worker,
        "embedding_model": settings.embedding_model,
        "reranker": settings.reranker_backend,
    }


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"# {m['date']}: {m['cpu']}, {m['cores']} cores, {m['device']}/{m['dtype']}, "
        f"{m['torch_threads_per_worker']} torch thread(s) per worker"
    )
    if ing := report.get("ingest"):
        print(f"\n## ingestion ({ing['documents']} documents, {ing['service']['chunks']} chunks)")
        for name in ("service", "bare", "naive"):
            row = ing[name]
            print(f"{name:<8} {_f(row['chunks_per_s']):>8} chunks/s  ({_f(row['seconds'])} s)")
        print(f"service / bare  = {ing['service_over_bare']:.2f}x   (target >= 0.85)")
        print(f"service / naive = {ing['service_over_naive']:.2f}x   (target >= 2.5)")
    for label, ask in report.get("ask", {}).items():
        print(f"\n## ask, {label}")
        print("clients  questions   p50 ms   p95 ms   p99 ms   q/s   mean batch")
        for r in ask["levels"]:
            print(
                f"{r['clients']:>7} {r['questions']:>10} {_f(r['p50_ms'], 0):>8} {_f(r['p95_ms'], 0):>8} "
                f"{_f(r['p99_ms'], 0):>8} {r['questions_per_s']:>5.2f} {r['mean_batch_size']:>12.2f}"
            )
        print(f"in-process p50: {_f(ask['in_process']['p50_ms'], 0)} ms")
        if "p50_over_in_process" in ask:
            q = ask["qps_ratio"]
            print(
                f"end-to-end p50 (1 client) / in-process p50 = {ask['p50_over_in_process']:.2f}x"
                " (target <= 1.3)"
            )
            print(f"q/s at {q['clients']} clients / q/s at 1 client = {q['ratio']:.2f}x (target >= 3)")
    if search := report.get("search"):
        print(f"\n## search: HNSW vs exact, {search['questions']} questions")
        for r in search["levels"]:
            mark = " (default)" if r["default"] else ""
            print(
                f"ef {r['ef']:>4}{mark:<10} recall@10 {r['recall_at_10']:.4f}   p50 {_f(r['p50_ms'], 1)} ms"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path, help="BEIR folder (corpus.jsonl, queries.jsonl)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=os.environ.get("QUARRY_API_KEY"), help="default: $QUARRY_API_KEY")
    p.add_argument("--collection", default="scifact", help="an already ingested collection for ask/search")
    p.add_argument("--docs", type=int, default=None, help="ingest only the first N documents (default: all)")
    p.add_argument("--clients", default="1,4,16", help="client counts for the ask benchmark")
    p.add_argument("--per-client", type=int, default=4, help="questions per client at each level")
    p.add_argument("--efs", default="16,64", help="ef values besides the default")
    p.add_argument("--search-questions", type=int, default=200)
    p.add_argument("--only", choices=("ingest", "ask", "search"), action="append", help="run only these")
    p.add_argument("--timeout", type=float, default=3600.0, help="max seconds for one job")
    p.add_argument("--json", type=Path, default=Path("bench/results/latest.json"))
    return p.parse_args(argv)


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from workers.runtime import Runtime  # noqa: PLC0415 - heavy: only this measurement loads it

    client = Client(args.url, args.api_key)
    rt = Runtime(settings)  # the worker's lazy models and Milvus client, loaded once for every part
    only = set(args.only or ("ingest", "ask", "search"))
    questions = [row["text"] for row in read_jsonl(args.data_dir / "queries.jsonl")]
    report: dict[str, Any] = {
        "machine": machine(settings),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if "ingest" in only:
        rows = read_jsonl(args.data_dir / "corpus.jsonl")
        docs = [to_document(r) for i, r in enumerate(rows) if args.docs is None or i < args.docs]
        report["ingest"] = perf_ingest.run(client, docs, rt, args.timeout)
    if "ask" in only:
        levels = [int(c) for c in args.clients.split(",")]
        base = {"collection": args.collection, "top_k": 10}
        report["ask"] = {
            label: perf_ask.run(
                client,
                rt,
                {**base, **extra},
                questions,
                levels=levels,
                per_client=args.per_client,
                timeout_s=args.timeout,
            )
            for label, extra in (("default pipeline (reranked)", {}), ("no reranker", {"rerank": False}))
        }
    if "search" in only:
        efs = sorted({settings.search_ef, *(int(e) for e in args.efs.split(","))})
        report["search"] = perf_search.run(rt, args.collection, questions[: args.search_questions], efs)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args, get_settings())
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
