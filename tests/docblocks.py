"""The fenced blocks of README.md and docs/*.md, and how a documented JSON answer matches a real one.

A documented answer is abridged on purpose, so matching is by shape: every key it shows is in the real
answer with a matching value; a list matches item by item as far as it goes; a string ending in "…" stands
for any string starting with what comes before it ("…" alone: any string), a UTC timestamp for any UTC
timestamp; a float stands for any number (scores and timings vary); anything else (states, counts,
booleans, null) must be equal. So a renamed field, a changed count or a new state fails the docs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = "…"
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
_FENCE = re.compile(r"^([ \t]*)```(\S*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class _Found:
    block: Block
    start: int
    end: int


def _found(path: Path) -> list[_Found]:
    source = path.read_text(encoding="utf-8")
    return [
        _Found(Block(path, source.count("\n", 0, m.start()) + 1, m.group(2), _dedent(m)), m.start(), m.end())
        for m in _FENCE.finditer(source)
    ]


def _dedent(match: re.Match[str]) -> str:
    """A block's text without the indentation of its fence (a block inside a list item)."""
    indent, lines = len(match.group(1)), match.group(3).splitlines(True)
    return "".join(line[indent:] if line[:indent].isspace() else line for line in lines)


def blocks(path: Path) -> list[Block]:
    return [found.block for found in _found(path)]


def runs(path: Path) -> list[tuple[Block, Block | None]]:
    """Each `sh` block (a command to run) with the `json` block right under it (its documented answer).

    Shell shown but never run (`make run`, Docker) is fenced as `shell`, and listed in test_docs_blocks.
    """
    found, source = _found(path), path.read_text(encoding="utf-8")
    pairs: list[tuple[Block, Block | None]] = []
    for here, after in zip(found, [*found[1:], None], strict=False):  # the last has nothing after it
        if here.block.lang != "sh":
            continue
        answer = (
            after is not None and after.block.lang == "json" and not source[here.end : after.start].strip()
        )
        pairs.append((here.block, after.block if answer and after is not None else None))
    return pairs


def json_values(text: str) -> list[Any]:
    """Every JSON value in `text`, one after another (a command may print several)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


def mismatches(documented: Any, real: Any, where: str = "$") -> Iterator[str]:
    """Where `real` differs from what the docs show (empty: it matches)."""
    if isinstance(documented, dict):
        yield from _object(documented, real, where)
    elif isinstance(documented, list):
        if not isinstance(real, list) or len(real) < len(documented):
            yield f"{where}: documented {len(documented)} items, got {real!r}"
            return
        for index, value in enumerate(documented):
            yield from mismatches(value, real[index], f"{where}[{index}]")
    elif not _scalar_matches(documented, real):
        yield f"{where}: documented {documented!r}, got {real!r}"


def _object(documented: dict[str, Any], real: Any, where: str) -> Iterator[str]:
    if not isinstance(real, dict):
        yield f"{where}: documented an object, got {real!r}"
        return
    for key, value in documented.items():
        if key not in real:
            yield f"{where}.{key}: documented, missing in {sorted(real)}"
        else:
            yield from mismatches(value, real[key], f"{where}.{key}")


def _scalar_matches(documented: Any, real: Any) -> bool:
    if isinstance(documented, str) and documented.endswith(PLACEHOLDER):
        return isinstance(real, str) and real.startswith(documented[: -len(PLACEHOLDER)])
    if isinstance(documented, str) and _TIMESTAMP.match(documented):
        return isinstance(real, str) and _TIMESTAMP.match(real) is not None
    if isinstance(documented, float):
        return isinstance(real, (int, float)) and not isinstance(real, bool)
    return bool(documented == real and type(documented) is type(real))
