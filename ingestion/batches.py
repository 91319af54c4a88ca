"""Batch files: the coordinator writes parsed documents (and parse failures) for batch tasks to read
(stored by `store.uploads`, beside the upload)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import chain, islice

from common.types import Document
from ingestion.parsing import Failure, Item


def _line(item: Item) -> str:
    if isinstance(item, Failure):
        return json.dumps({"failure": item.reason, "doc_id": item.doc_id}, ensure_ascii=False)
    record = {"id": item.id, "text": item.text, "title": item.title, "metadata": item.metadata}
    return json.dumps(record, ensure_ascii=False)


def batch_text(items: list[Item]) -> str:
    """A batch file's content: one JSON line per document or parse failure."""
    return "".join(_line(item) + "\n" for item in items)


def parse_batch(text: str) -> list[Item]:
    """The items of a batch file. Lines end at "\n" only: `str.splitlines` would also cut at U+2028,
    U+0085 or \\x1c, which a document's text may hold unescaped (`ensure_ascii=False`), and one such
    document broke its whole batch."""
    items: list[Item] = []
    for line in text.split("\n"):
        if not line:
            continue
        record = json.loads(line)
        if "failure" in record:
            items.append(Failure(doc_id=record["doc_id"], reason=record["failure"]))
        else:
            items.append(Document(record["id"], record["text"], record["title"], record["metadata"]))
    return items


def split_into_batches(items: Iterable[Item], size: int, spread: int = 1) -> Iterator[list[Item]]:
    """Batches of `size` items, in order. An upload of at most `spread` batches' worth is cut into `spread`
    near-equal batches instead (fewer when it holds fewer items): one batch would keep one ingest process
    busy while the others idle, and a job ends with its slowest batch. A larger upload is cut as before:
    its batches keep every process busy until its last few. At most `spread * size + 1` items are held."""
    iterator = iter(items)
    head = list(islice(iterator, spread * size + 1))
    if len(head) <= spread * size:
        n, parts = len(head), min(spread, len(head))
        yield from (head[n * part // parts : n * (part + 1) // parts] for part in range(parts))
        return
    rest = chain(head, iterator)
    while batch := list(islice(rest, size)):
        yield batch
