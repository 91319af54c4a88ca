"""The device benchmark's pure parts: its configurations, the summary and ratio maths, the report and table.

Kept apart from the code that starts stacks so that they can be unit-tested without a model or a server
(tests/unit/test_device_bench.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.metrics import percentile
from common.settings import Settings

# The settings each configuration decides; every other one is the environment's, as for `make run`.
CONTROLLED = (
    "TORCH_THREADS",
    "INGEST_CONCURRENCY",
    "QUESTION_GATE",
    "INGEST_NICE",
    "INGEST_SMALL_JOB_BATCHES",
)
# Never inherited: each stack has its own broker, uploads, lock file and metrics under its temp dir, and an
# open API on loopback (the benchmark's client sends no key).
NOT_INHERITED = (
    "API_KEYS",
    "API_HOST",
    "BROKER_URL",
    "RESULT_BACKEND_URL",
    "UPLOAD_DIR",
    "DEVICE_GATE",
    "PROMETHEUS_MULTIPROC_DIR",
)
MODES = ("reranked", "plain")  # the two kinds of question: the default pipeline, and `"rerank": false`
TARGETS = {"service_over_bare": 0.85, "device_over_split": 1.4, "p50_under_ingest_over_idle": 1.5}


def configs(cores: int) -> dict[str, dict[str, str]]:
    """Every configuration by name: the settings (environment variables) it sets.

    `device` is `make run`'s defaults (TORCH_THREADS unset: every core for the ask worker, shared by the
    ingest worker's processes); `split` the previous design (one ingest process, half the cores each, no
    turn-taking); `none`, `nice` and `gate` the question-priority options alone, on all cores;
    `flush-each-batch` the defaults with the previous flushing (a Milvus flush after every ingest batch);
    `one-batch` the defaults with a small upload cut into one batch, as before 2026-12-05.
    """
    half = str(max(1, cores // 2))
    return {
        "device": {"QUESTION_GATE": "true", "INGEST_NICE": "10"},
        "split": {
            "TORCH_THREADS": half,
            "INGEST_CONCURRENCY": "1",
            "QUESTION_GATE": "false",
            "INGEST_NICE": "0",
        },
        "none": {"QUESTION_GATE": "false", "INGEST_NICE": "0"},
        "nice": {"QUESTION_GATE": "false", "INGEST_NICE": "10"},
        "gate": {"QUESTION_GATE": "true", "INGEST_NICE": "0"},
        "flush-each-batch": {"QUESTION_GATE": "true", "INGEST_NICE": "10", "MILVUS_FLUSH_INTERVAL_S": "0"},
        "one-batch": {"QUESTION_GATE": "true", "INGEST_NICE": "10", "INGEST_SMALL_JOB_BATCHES": "1"},
    }


def select(names: str, cores: int) -> dict[str, dict[str, str]]:
    """The configurations `--configs` names (comma-separated, in order); ValueError for an unknown one."""
    known = configs(cores)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise ValueError(f"unknown configuration(s) {unknown or names!r}; choose from {', '.join(known)}")
    return {name: known[name] for name in dict.fromkeys(chosen)}


def stack_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """A stack's environment: `base` without what the configuration or the stack decides, plus `overrides`."""
    dropped = set(CONTROLLED) | set(NOT_INHERITED)
    return {key: value for key, value in base.items() if key not in dropped} | {
        "API_HOST": "127.0.0.1",
        **overrides,
    }


def effective(overrides: Mapping[str, str], cores: int, gpu: bool = False) -> dict[str, Any]:
    """What a configuration amounts to on this machine (for the report), as Settings resolves it."""
    threads, concurrency = overrides.get("TORCH_THREADS"), overrides.get("INGEST_CONCURRENCY")
    settings = Settings(  # only what decides the threads: the rest of the environment is not the stack's
        torch_threads=int(threads) if threads else None,
        ingest_concurrency=int(concurrency) if concurrency else None,
    )
    processes = settings.ingest_processes(gpu)
    return {
        "torch_threads": settings.threads_per_process(1, cores),
        "ingest_processes": processes,
        "ingest_threads": settings.threads_per_process(processes, cores),
        "question_gate": overrides.get("QUESTION_GATE", "true").lower() in ("1", "true", "yes", "on"),
        "ingest_nice": int(overrides.get("INGEST_NICE", "10")),
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def latencies(ms: Sequence[float]) -> dict[str, Any]:
    """Count, p50 and p95 of latencies in ms (None when there are none: JSON has no NaN)."""
    return {"n": len(ms), "p50_ms": _number(percentile(ms, 50)), "p95_ms": _number(percentile(ms, 95))}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing (a part not run, no question asked)."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def startup(
    ready_s: float,
    endpoint: str,
    first_answer_s: float,
    first_ms: float,
    next_ms: Sequence[float],
    *,
    again_ms: float | None = None,
) -> dict[str, Any]:
    """Warm from the start: seconds to ready and to the first answer; first question vs the next ones, and
    vs itself asked again after them (the same text: what a question costs does not differ, warmth does)."""
    median = _number(percentile(next_ms, 50))
    return {
        "ready_s": ready_s,
        "ready_endpoint": endpoint,
        "first_answer_s": first_answer_s,
        "first_question_ms": first_ms,
        "next_questions": len(next_ms),
        "next_median_ms": median,
        "first_over_next": ratio(first_ms, median),
        "first_again_ms": again_ms,
        "first_over_again": ratio(first_ms, again_ms),
    }


def _around(bare: Mapping[str, Any]) -> str:
    """How fast the bare model ran before and after the stacks (the figure is the median of all passes)."""
    if "after_chunks_per_s" not in bare:
        return ""
    before, after = _f(bare["before_chunks_per_s"], 1), _f(bare["after_chunks_per_s"], 1)
    return f"; median of all passes: {before} before the stacks, {after} after"


def ratios(results: Mapping[str, Mapping[str, Any]], bare: Mapping[str, Any] | None) -> dict[str, Any]:
    """The figures the targets are about, from each configuration's results and the bare model's."""

    def rate(name: str) -> float | None:
        result = results.get(name, {})
        return result["ingest"]["chunks_per_s"] if "ingest" in result else None

    bare_rate = bare["chunks_per_s"] if bare else None
    under: dict[str, dict[str, float | None]] = {}
    for name, result in results.items():
        if "idle" in result and "under_ingest" in result:
            under[name] = {
                mode: ratio(result["under_ingest"][mode]["p50_ms"], result["idle"][mode]["p50_ms"])
                for mode in MODES
            }
    return {
        "service_over_bare": {name: ratio(rate(name), bare_rate) for name in results},
        "chunks_match_bare": {
            name: bare is not None and result["ingest"]["chunks"] == bare["chunks"]
            for name, result in results.items()
            if "ingest" in result
        },
        "device_over_split": ratio(rate("device"), rate("split")),
        "p50_under_ingest_over_idle": under,
    }


def build(
    machine: Mapping[str, Any],
    args: Mapping[str, Any],
    bare: Mapping[str, Any] | None,
    results: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The JSON report: machine facts, arguments, the bare model, each configuration, ratios, targets."""
    return {
        "machine": dict(machine),
        "args": dict(args),
        "targets": dict(TARGETS),
        "bare": dict(bare) if bare else None,
        "configs": {name: dict(result) for name, result in results.items()},
        "ratios": ratios(results, bare),
    }


def _f(value: float | None, digits: int = 0, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _x(value: float | None) -> str:
    return _f(value, 2, "x")


def _pair(row: Mapping[str, Any]) -> str:
    return f"{_f(row['p50_ms'])}/{_f(row['p95_ms'])} ({row['n']})"


def table(report: Mapping[str, Any]) -> str:
    """The report for a terminal: a block per part, one row per configuration, then the targets."""
    m, bare = report["machine"], report["bare"]
    lines = [
        f"# {m['date']}: {m['cpu']}, {m['cores']} cores, {m['device']}/{m['dtype']}, torch {m['torch']}, "
        f"{m['embedding_model']}",
        f"bare model, all {bare['threads']} cores: {_f(bare['chunks_per_s'], 1)} chunks/s "
        f"({bare['chunks']} chunks{_around(bare)})"
        if bare
        else "bare model: not run",
    ]
    for name, res in report["configs"].items():
        if "error" in res:
            lines.append(f"{name}: FAILED: {res['error']}")
    blocks = (_startup_rows(report), _ingest_rows(report), _question_rows(report), _target_lines(report))
    return "\n\n".join("\n".join(block) for block in (lines, *blocks))


def _startup_rows(report: Mapping[str, Any]) -> list[str]:
    rows = [
        "start (* = ready by /healthz: no /readyz), first question after ready vs the next 9 and vs itself",
        "asked again after them, first ingest;",
        "threads: ingest processes x torch threads each / the ask worker's torch threads",
        f"{'config':<7} {'threads':>7} {'gate':>4} {'nice':>4} {'ready s':>8} {'1st answer s':>12} "
        f"{'1st q ms':>8} {'next med':>8} {'again ms':>8} {'1st ingest ms':>13}",
    ]
    for name, res in report["configs"].items():
        s, st = res["settings"], res.get("startup", {})
        mark = "*" if st.get("ready_endpoint") == "/healthz" else " "
        rows.append(
            f"{name:<7} {_threads(s):>7} {_on(s['question_gate']):>4} {s['ingest_nice']:>4} "
            f"{_f(st.get('ready_s'), 1):>7}{mark} {_f(st.get('first_answer_s'), 1):>12} "
            f"{_f(st.get('first_question_ms')):>8} {_f(st.get('next_median_ms')):>8} "
            f"{_f(st.get('first_again_ms')):>8} "
            f"{_f(st.get('first_ingest_ms')):>13}"
        )
    rows.extend(_stage_line(name, res.get("startup", {})) for name, res in report["configs"].items())
    return rows


def _stage_line(name: str, st: Mapping[str, Any]) -> str:
    """The worker's stages of the first question and of it asked again: where a cold start shows."""
    first, again = st.get("first_stages_ms") or {}, st.get("again_stages_ms") or {}
    cells = [f"{k.removesuffix('_ms')} {_f(first.get(k))}/{_f(again.get(k))}" for k in first]
    return f"{name:<7} worker stages of the 1st question / again, ms: " + (", ".join(cells) or "-")


def _threads(s: Mapping[str, Any]) -> str:
    ingest = f"{s.get('ingest_processes', 1)}x{s.get('ingest_threads', s['torch_threads'])}"
    return f"{ingest}/{s['torch_threads']}"


def _ingest_rows(report: Mapping[str, Any]) -> list[str]:
    r = report["ratios"]
    rows = [
        "ingestion through the API: alone, and while questions are asked",
        f"{'config':<7} {'chunks':>7} {'chunks/s':>9} {'svc/bare':>8} {'under questions':>16} "
        f"{'small job s':>11}",
    ]
    for name, res in report["configs"].items():
        ing, under, small = res.get("ingest", {}), res.get("under_ingest", {}), res.get("small_ingest", {})
        rows.append(
            f"{name:<7} {ing.get('chunks', '-'):>7} {_f(ing.get('chunks_per_s'), 1):>9} "
            f"{_x(r['service_over_bare'].get(name)):>8} {_f(under.get('chunks_per_s'), 1):>16} "
            f"{_f(small.get('median_s'), 2):>11}"
        )
    return rows


def _question_rows(report: Mapping[str, Any]) -> list[str]:
    heads = [f"{part} {mode}" for part in ("idle", "ingest") for mode in MODES]
    rows = [
        "questions p50/p95 ms (count), 1 client: idle, and while an ingest runs",
        f"{'config':<7} " + " ".join(f"{h:>20}" for h in heads) + "  under/idle p50",
    ]
    for name, res in report["configs"].items():
        if "idle" not in res or "under_ingest" not in res:
            continue
        cells = [_pair(res[part][mode]) for part in ("idle", "under_ingest") for mode in MODES]
        under = report["ratios"]["p50_under_ingest_over_idle"].get(name, {})
        ratios_ = " ".join(_x(under.get(mode)) for mode in MODES)
        rows.append(f"{name:<7} " + " ".join(f"{c:>20}" for c in cells) + f"  {ratios_}")
    return rows


def _target_lines(report: Mapping[str, Any]) -> list[str]:
    r, t = report["ratios"], report["targets"]
    under = r["p50_under_ingest_over_idle"].get("device", {})
    return [
        "targets (not asserted)",
        f"service/bare (device) = {_x(r['service_over_bare'].get('device'))}"
        f"   target >= {t['service_over_bare']}",
        f"device/split chunks/s = {_x(r['device_over_split'])}   target >= {t['device_over_split']}",
        "p50 under ingest / idle (device) = "
        + ", ".join(f"{mode} {_x(under.get(mode))}" for mode in MODES)
        + f"   target <= {t['p50_under_ingest_over_idle']}",
    ]
