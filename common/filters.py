"""The one function that turns structured filters into a Milvus boolean expression.

Milvus-lite rejects `filter_params` templates, so values are rendered as literals here and nowhere
else: field names are checked against a closed set, metadata keys against a strict pattern, and
every value is encoded as a JSON-style literal (the escapes Milvus's parser accepts).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import InvalidRequest
from common.settings import Settings

FIELDS = frozenset({"collection", "doc_id", "chunk_index", "pk"})
METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_IN_VALUES = 1000

Scalar = str | int | float | bool


def literal(value: Any) -> str:
    """A safe Milvus literal for a scalar; anything else is refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest("filter values must be finite numbers")
        return repr(value)
    if isinstance(value, str):
        if _FORBIDDEN_CHARS.search(value):
            raise InvalidRequest("filter values must not contain control characters")
        # Non-ASCII stays as is: Milvus's parser has no \u escapes, but quotes, backslashes and
        # newlines are escaped exactly as JSON does.
        return json.dumps(value, ensure_ascii=False)
    raise InvalidRequest(f"filter values must be strings, numbers or booleans, not {type(value).__name__}")


def _field_ref(name: str) -> str:
    if name in FIELDS:
        return name
    if name.startswith("metadata."):
        key = name.removeprefix("metadata.")
        if METADATA_KEY.match(key):
            return f'metadata["{key}"]'
        raise InvalidRequest(f"invalid metadata key {key!r}: use letters, digits and _ (max 64)")
    raise InvalidRequest(f"cannot filter on {name!r}: use one of {sorted(FIELDS)} or metadata.<key>")


def _condition(name: str, value: Any) -> str:
    ref = _field_ref(name)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise InvalidRequest(f"filter on {name!r} has an empty list")
        if len(value) > MAX_IN_VALUES:
            raise InvalidRequest(f"filter on {name!r} has more than {MAX_IN_VALUES} values")
        values = [literal(item) for item in value]
        if ref.startswith("metadata["):  # milvus-lite has no `in` on JSON paths
            return "(" + " or ".join(f"{ref} == {item}" for item in values) + ")"
        return f"{ref} in [{', '.join(values)}]"
    return f"{ref} == {literal(value)}"


def check_limits(conditions: Mapping[str, Any], settings: Settings) -> None:
    """A question's filters are stored with its job and rendered into every search: bound what they cost."""
    if len(conditions) > settings.max_filter_conditions:
        raise InvalidRequest(
            f"filters have {len(conditions)} conditions; at most {settings.max_filter_conditions}"
        )
    most_chars = settings.max_filter_value_chars
    for name, value in conditions.items():
        values = value if isinstance(value, list) else [value]
        if len(values) > settings.max_filter_values:
            raise InvalidRequest(f"filter on {name!r} has more than {settings.max_filter_values} values")
        longest = max((len(item) for item in values if isinstance(item, str)), default=0)
        if longest > most_chars:
            raise InvalidRequest(
                f"filter on {name!r} has a value of {longest} characters; at most {most_chars}"
            )


def render_filter(conditions: Mapping[str, Any]) -> str:
    """AND of equality / `in` conditions, e.g. {"collection": "c", "metadata.lang": ["en", "de"]}."""
    return " and ".join(_condition(name, value) for name, value in conditions.items())
