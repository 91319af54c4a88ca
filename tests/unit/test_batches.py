from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.types import Document
from ingestion.batches import batch_text, parse_batch, split_into_batches
from ingestion.parsing import Failure
from store.uploads import LocalUploads

ODD_LINE_ENDS = "\u2028\u2029\x85\x1c\x1d\x1e\x0b\x0c\r"  # str.splitlines cuts at each of these


def test_batch_files_round_trip_documents_and_failures(tmp_path: Path) -> None:
    items = [
        Document("a", "text é\nline", "Title", {"k": [1, 2]}),
        Failure(doc_id="bad.pdf", reason="bad.pdf: not a readable PDF"),
        Document("b", "x"),
    ]
    store = LocalUploads(tmp_path)
    store.write_text("job/batches/00000.jsonl", batch_text(items))
    assert parse_batch(store.read_text("job/batches/00000.jsonl")) == items
    assert not list((tmp_path / "job" / "batches").glob("*.partial"))


@pytest.mark.parametrize("char", list(ODD_LINE_ENDS))
def test_a_document_holding_an_odd_line_end_keeps_its_batch_whole(char: str) -> None:
    items = [Document("a", f"before{char}after", f"title{char}"), Document("b", "next one")]
    assert parse_batch(batch_text(items)) == items


def test_split_into_batches() -> None:
    docs = [Document(str(i), "t") for i in range(5)]
    assert [len(batch) for batch in split_into_batches(docs, 2)] == [2, 2, 1]
    assert list(split_into_batches([], 2)) == []


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        (0, []),
        (1, [1]),
        (3, [1, 2]),
        (64, [32, 32]),
        (101, [50, 51]),
        (128, [64, 64]),  # two batches' worth: still spread
        (129, [64, 64, 1]),  # more: plain batches, every process busy until the last few
        (300, [64, 64, 64, 64, 44]),
    ],
)
def test_a_small_upload_is_spread_over_near_equal_batches(count: int, sizes: list[int]) -> None:
    docs = [Document(str(i), "t") for i in range(count)]
    batches = list(split_into_batches(iter(docs), 64, spread=2))
    assert [len(batch) for batch in batches] == sizes
    assert [doc for batch in batches for doc in batch] == docs  # every item once, in order


def test_spread_holds_at_most_its_batches_worth_before_the_first_batch() -> None:
    taken = 0

    def items() -> Iterator[Document]:
        nonlocal taken
        for i in range(1000):
            taken += 1
            yield Document(str(i), "t")

    first = next(split_into_batches(items(), 4, spread=3))
    assert (len(first), taken) == (4, 13)
