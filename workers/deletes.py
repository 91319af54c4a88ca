"""Deletes that win over every write accepted before them, and only over those (`common.fences`).

A delete first leaves its tombstone, so no earlier-accepted batch starts writing what it deletes; then it
waits out the writers already under way (a document's lock; a collection's writer entries); then it removes
the rows written by earlier jobs. Rows of uploads accepted after the delete survive it, whatever order the
workers happen to run the two jobs in.
"""

from __future__ import annotations

from workers.runtime import Runtime


def delete_documents(rt: Runtime, collection: str, doc_ids: list[str] | None, seq: int) -> int:
    """Chunks deleted. `seq` 0 (a message queued before jobs were numbered): every row goes."""
    before = seq or None
    if seq:
        rt.fences.tombstone(collection, doc_ids, seq)
    if doc_ids is None:
        rt.fences.drain(collection, seq, rt.settings.task_soft_time_limit_s / 2)
        deleted = rt.store.delete(collection, None, before_seq=before)
    else:
        with rt.locks.hold(collection, doc_ids):
            deleted = rt.store.delete(collection, doc_ids, before_seq=before)
    rt.store.flush()
    return deleted
