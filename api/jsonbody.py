"""Strict decoding of JSON request bodies: whatever the decoder cannot take is a 400, never a 500.

Flask's own decoder lets a few things through that fail later, far from the request: nesting deep enough
to exhaust the decoder's recursion (a 500), lone UTF-16 surrogates ("\\ud800", valid JSON escapes but not
Unicode: every UTF-8 encoder after this point refuses them), NaN and Infinity (not JSON), and repeated
keys (two parsers may keep different ones: a parser differential). Each is refused here, once, for every
route, so everything downstream sees plain JSON.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from common.fields import SURROGATES


class RefusedJSON(ValueError):
    """A body the decoder refuses; a ValueError, so Flask answers 400 with this message."""


def _reject_constant(name: str) -> NoReturn:
    raise RefusedJSON(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        keys = [key for key, _ in pairs]
        repeated = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise RefusedJSON(f"the key {repeated!r} appears twice in one object")
    return result


def check_tree(value: Any, max_depth: int) -> None:
    """Depth and text of a decoded value, without recursion (the value may be as deep as the decoder took)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if SURROGATES.search(item):
                raise RefusedJSON(
                    "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode"
                )
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise RefusedJSON(f"arrays and objects are nested deeper than {max_depth} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's provider with a strict `loads`; responses are encoded as before."""

    max_depth = 32

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """JSON text to a value; raises RefusedJSON (400) for anything but plain UTF-8 JSON."""
        try:
            text = s.decode("utf-8") if isinstance(s, bytes) else s  # not UTF-16/32, which json.loads sniffs
            value = json.loads(
                text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys, **kwargs
            )
        except RecursionError:
            raise RefusedJSON(f"arrays and objects are nested deeper than {self.max_depth} levels") from None
        except UnicodeDecodeError as exc:
            raise RefusedJSON(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        check_tree(value, self.max_depth)
        return value


def install(app: Flask, max_depth: int) -> None:
    provider = StrictJSONProvider(app)
    provider.max_depth = max_depth
    provider.sort_keys = False
    app.json = provider
