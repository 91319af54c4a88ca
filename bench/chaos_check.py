"""The chaos run's verdict: Milvus holds, for each document, exactly one whole version the jobs allow.

Expected rows come from the service's own functions (`chunks_of` with the service's embedder tokenizer,
`content_hash`, `chunk_pk`), never from a copy of them.

Which state a document may end in is decided from the client's log alone, honestly about concurrency. Each
operation on a document took effect somewhere between the moment its request was first sent (`started`)
and the moment its job was known to have ended (`ended`). An operation *certainly* took effect when its job
reports it (document outcome `succeeded` or `skipped`; a delete job `succeeded`); it *possibly* did when
its job never said (failed or cancelled without a document outcome, stuck, or a request given up on);
never when the document's own outcome is `failed`. The document may end in the state left by any
operation not followed for certain by another: one X such that no certain Y started after X had ended.
"""

from __future__ import annotations

import inspect
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pymilvus import MilvusClient

from bench.chaos_load import VERSIONS, Op, Universe, document
from common.settings import Settings
from common.types import Embedder
from ingestion.pipeline import content_hash
from ingestion.writing import chunks_of
from store.rows import chunk_pk

ABSENT = "absent"
INF = float("inf")
FIELDS = ["pk", "collection", "doc_id", "chunk_index", "text", "content_hash"]
Row = tuple[str, int, str, str]  # pk, chunk_index, text, content_hash


@dataclass
class Effect:
    """One operation on one document: the state it leaves (a version, or ABSENT)."""

    state: str
    certain: bool
    started: float
    ended: float
    op: Op
    note: str
    applies: bool = True  # False: the document's own outcome says `failed` (shown in histories only)


@dataclass
class Verdict:
    documents: int = 0
    chunks: int = 0
    determinate: int = 0  # documents whose jobs allow exactly one end state (the rest: a choice of them)
    present: int = 0  # documents that hold a version at the end
    violations: list[str] = field(default_factory=list)


def expected_rows(
    universe: Universe, embedder: Embedder, settings: Settings
) -> dict[tuple[str, str, int], set[Row]]:
    """Every version's rows, as the service would write them, per (collection, doc id, version)."""
    rows: dict[tuple[str, str, int], set[Row]] = {}
    for doc_id in universe.doc_ids:
        for version in range(VERSIONS):
            doc = document(doc_id, version)
            digest = content_hash(doc)
            chunks = chunks_of(doc, embedder, settings)
            for collection in universe.collections:
                rows[(collection, doc_id, version)] = {
                    (pk_of(collection, doc_id, c.index, digest), c.index, c.text, digest) for c in chunks
                }
    return rows


def pk_of(collection: str, doc_id: str, index: int, digest: str) -> str:
    """The service's own `chunk_pk`; it names the document's version since schema 3, and took three
    arguments before (so the run also judges older checkouts)."""
    make: Any = chunk_pk
    if len(inspect.signature(chunk_pk).parameters) == 3:
        return str(make(collection, doc_id, index))
    return str(make(collection, doc_id, index, digest))


def read_rows(uri: str, name: str) -> list[dict[str, Any]]:
    """Every row of the physical collection, on a connection of its own (Milvus was restarted under the
    others); checks the page against count(*) so a capped query cannot hide rows."""
    client = MilvusClient(uri=uri, timeout=30, dedicated=True)
    try:
        if not client.has_collection(name):
            return []
        client.load_collection(name)  # a restarted milvus-lite leaves it released
        count = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        total = int(count[0]["count(*)"])
        rows: list[dict[str, Any]] = []
        iterator = client.query_iterator(
            name, batch_size=1000, filter='pk != ""', output_fields=FIELDS, consistency_level="Strong"
        )
        while batch := iterator.next():
            rows += batch
        iterator.close()
    finally:
        client.close()
    if len(rows) != total:
        raise RuntimeError(f"read {len(rows)} rows but count(*) says {total}")
    return rows


def effects(ops: list[Op], collection: str, doc_id: str) -> list[Effect]:
    """What each logged operation may have done to this document."""
    found = []
    for op in ops:
        if op.collection != collection or op.status not in ("accepted", "unresolved"):
            continue
        ended = op.ended if op.ended is not None else INF
        if op.kind in ("ingest", "replace") and doc_id in op.docs:
            state, report = f"v{op.docs[doc_id]}", op.reports.get(doc_id)
            status = report["status"] if report else None
            certain, note = status in ("succeeded", "skipped"), status or f"no report ({op.final})"
            found.append(Effect(state, certain, op.started, ended, op, note, applies=status != "failed"))
        elif op.kind == "delete_collection" or (op.kind == "delete_doc" and doc_id in op.docs):
            certain = op.final == "succeeded"
            found.append(Effect(ABSENT, certain, op.started, ended, op, str(op.final)))
    return found


def allowed_states(found: list[Effect]) -> set[str]:
    """States of the operations no certain operation surely came after (plus ABSENT, the start)."""
    found = [e for e in found if e.applies]
    last_certain_start = max((e.started for e in found if e.certain), default=-INF)
    allowed = {e.state for e in found if e.ended >= last_certain_start}
    if not any(e.certain for e in found):
        allowed.add(ABSENT)
    return allowed


def observed_state(
    rows: list[dict[str, Any]], versions: dict[int, set[Row]], where: str
) -> tuple[str, list[str]]:
    """The version these rows are (or ABSENT), and what is wrong with them."""
    if not rows:
        return ABSENT, []
    got = {(r["pk"], int(r["chunk_index"]), r["text"], r["content_hash"]) for r in rows}
    by_hash = {next(iter(rs))[3]: v for v, rs in versions.items()}
    hashes = sorted({r["content_hash"] for r in rows})
    problems = []
    if len(hashes) > 1:
        names = [f"v{by_hash[h]}" if h in by_hash else f"unknown {h[:12]}" for h in hashes]
        problems.append(f"{where}: rows of {len(hashes)} versions at once ({', '.join(names)})")
    version = by_hash.get(hashes[-1]) if len(hashes) == 1 else None
    if len(hashes) == 1 and version is None:
        problems.append(f"{where}: content hash {hashes[0][:12]} is no version a client submitted")
    if version is not None:
        want = versions[version]
        missing = sorted(i for (_pk, i, _t, _h) in want - got)
        extra = sorted(i for (_pk, i, _t, _h) in got - want)
        if missing or extra:
            problems.append(
                f"{where}: partial v{version}: has chunks {sorted(r[1] for r in got)} of {len(want)}; "
                f"missing {missing}, unexpected {extra}"
            )
    if problems:
        return "broken", problems
    return f"v{version}", []


def history(found: list[Effect], t0: float) -> str:
    """The document's operations, for a violation's report."""
    lines = []
    for e in sorted(found, key=lambda e: e.started):
        end = "never" if e.ended == INF else f"{e.ended - t0:.1f}"
        weight = "certain" if e.certain else "possible" if e.applies else "no effect"
        lines.append(
            f"    {e.op.kind} job {e.op.job_id} -> {e.state} [{e.note}; job {e.op.first_end}/{e.op.final}; "
            f"{weight}] t={e.started - t0:.1f}..{end}"
        )
    return "\n".join(lines)


def judge(
    ops: list[Op], rows: list[dict[str, Any]], expected: dict[tuple[str, str, int], set[Row]], t0: float
) -> Verdict:
    """Compare every Milvus row with what the logged jobs allow."""
    verdict = Verdict(chunks=len(rows))
    for pk, times in Counter(r["pk"] for r in rows).items():
        if times > 1:
            verdict.violations.append(f"duplicate: pk {pk} stored {times} times")
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["collection"], row["doc_id"])].append(row)
    docs = {(c, d) for (c, d, _v) in expected}
    for key in sorted(set(grouped) - docs):
        verdict.violations.append(f"orphan: {key} has {len(grouped[key])} rows but is outside the universe")
    for collection, doc_id in sorted(docs):
        verdict.documents += 1
        where = f"{collection}/{doc_id}"
        versions = {v: expected[(collection, doc_id, v)] for v in range(VERSIONS)}
        state, problems = observed_state(grouped.get((collection, doc_id), []), versions, where)
        found = effects(ops, collection, doc_id)
        allowed = allowed_states(found)
        verdict.determinate += len(allowed) == 1
        verdict.present += state != ABSENT
        if not problems and state not in allowed:
            kind = "orphan" if not found else "unexpected"
            problems.append(f"{where}: {kind}: holds {state}, the jobs allow only {sorted(allowed)}")
        verdict.violations += [f"{p}\n{history(found, t0)}" for p in problems]
    return verdict


def job_violations(ops: list[Op], t0: float) -> list[str]:
    """Jobs that never ended, vanished, or changed their end after a client had read it."""
    problems = []
    for op in ops:
        if op.status != "accepted":
            continue
        label = f"{op.kind} job {op.job_id} on {op.collection} {sorted(op.docs)} t={op.started - t0:.1f}"
        if op.final in ("queued", "running"):
            problems.append(f"stuck: {label} still {op.final}")
        elif op.final is None:
            problems.append(f"lost: {label}: job could not be read ({op.error})")
        elif op.first_end is not None and op.first_end != op.final:
            problems.append(f"flipped: {label}: read {op.first_end} ({op.first_error}), later {op.final}")
    return problems
