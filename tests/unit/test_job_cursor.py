"""The job list's cursor: what it gives out comes back; anything else is a 4xx, never a Redis error."""

from __future__ import annotations

import base64
import json

import pytest

from common.errors import InvalidRequest
from common.job_list import Cursor


def _forged(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def test_a_cursor_round_trips() -> None:
    cursor = Cursor(1_796_381_837_229.5, "0" * 32)
    assert Cursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize(
    "text",
    [
        "not-a-cursor!",
        _forged({"score": 1}),
        _forged([1]),
        _forged([1, 2, 3]),
        _forged(["x", "y"]),
        _forged([1, 2]),
        base64.urlsafe_b64encode(b'[NaN, "a"]').decode(),
        base64.urlsafe_b64encode(b'[Infinity, "a"]').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_anything_else_is_refused_as_a_bad_request(text: str) -> None:
    with pytest.raises(InvalidRequest, match="cursor"):
        Cursor.decode(text)
