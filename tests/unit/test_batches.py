from __future__ import annotations

from pathlib import Path

from common.types import Document
from ingestion.batches import read_batch_file, split_into_batches, write_batch_file
from ingestion.parsing import Failure


def test_batch_files_round_trip_documents_and_failures(tmp_path: Path) -> None:
    items = [
        Document("a", "text é\nline", "Title", {"k": [1, 2]}),
        Failure(doc_id="bad.pdf", reason="bad.pdf: not a readable PDF"),
        Document("b", "x"),
    ]
    path = tmp_path / "job" / "batches" / "00000.jsonl"
    write_batch_file(path, items)
    assert read_batch_file(path) == items
    assert not list(path.parent.glob("*.partial"))


def test_split_into_batches() -> None:
    docs = [Document(str(i), "t") for i in range(5)]
    assert [len(batch) for batch in split_into_batches(docs, 2)] == [2, 2, 1]
    assert list(split_into_batches([], 2)) == []
