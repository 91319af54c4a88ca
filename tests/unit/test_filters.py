from __future__ import annotations

import json

import pytest

from common.errors import InvalidRequest
from common.filters import literal, render_filter


def test_equality_and_in() -> None:
    assert (
        render_filter({"collection": "c", "doc_id": ["a", "b"]})
        == 'collection == "c" and doc_id in ["a", "b"]'
    )
    assert render_filter({"chunk_index": 3}) == "chunk_index == 3"


def test_metadata_in_becomes_or_because_lite_has_no_json_in() -> None:
    assert (
        render_filter({"metadata.lang": ["en", "de"]})
        == '(metadata["lang"] == "en" or metadata["lang"] == "de")'
    )
    assert render_filter({"metadata.year": 2020, "metadata.ok": True}) == (
        'metadata["year"] == 2020 and metadata["ok"] == true'
    )


@pytest.mark.parametrize(
    "attack",
    [
        'x" or collection != "x',
        'x\\" or 1 == 1 or doc_id == \\"',
        "x\n) or (1 == 1",
        '"; drop collection quarry; "',
    ],
)
def test_injection_attempts_stay_inside_one_literal(attack: str) -> None:
    rendered = render_filter({"doc_id": attack})
    prefix = "doc_id == "
    assert rendered.startswith(prefix)
    # The rest is exactly one string literal that decodes back to the attack: nothing escapes it.
    assert json.loads(rendered[len(prefix) :]) == attack


def test_unicode_is_kept_literally_since_milvus_has_no_u_escapes() -> None:
    assert literal("ünï") == '"ünï"'


@pytest.mark.parametrize(
    "conditions",
    [
        {"text": "x"},
        {"metadata.bad key": 1},
        {"metadata.a]": 1},
        {"doc_id": []},
        {"doc_id": "nul\x00byte"},
        {"doc_id": {"nested": 1}},
        {"chunk_index": float("nan")},
        {"doc_id": ["x"] * 1001},
    ],
)
def test_invalid_filters_are_client_errors(conditions: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        render_filter(conditions)
