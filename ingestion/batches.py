"""Batch files: the coordinator writes parsed documents (and parse failures) here for batch tasks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from common.types import Document
from ingestion.parsing import Failure, Item


def _line(item: Item) -> str:
    if isinstance(item, Failure):
        return json.dumps({"failure": item.reason, "doc_id": item.doc_id}, ensure_ascii=False)
    record = {"id": item.id, "text": item.text, "title": item.title, "metadata": item.metadata}
    return json.dumps(record, ensure_ascii=False)


def write_batch_file(path: Path, items: list[Item]) -> None:
    """Written to a temporary name then renamed, so a batch task never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(_line(item) + "\n" for item in items), encoding="utf-8")
    os.replace(partial, path)


def read_batch_file(path: Path) -> list[Item]:
    items: list[Item] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "failure" in record:
            items.append(Failure(doc_id=record["doc_id"], reason=record["failure"]))
        else:
            items.append(Document(record["id"], record["text"], record["title"], record["metadata"]))
    return items


def split_into_batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
