"""The configuration table of docs/configuration.md, generated from `Settings` so that it cannot drift.

`python -m common.settings_doc` prints the table; `--write docs/configuration.md` replaces the one between the
`<!-- settings:start -->` and `<!-- settings:end -->` markers in that file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from common.settings import RENAMED, Settings

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
COMMAND = ".venv/bin/python -m common.settings_doc --write docs/configuration.md"

_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", "≥"))


def default_text(info: FieldInfo) -> str:
    """The default as one would write it in the environment; `unset` for None."""
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def bounds_text(info: FieldInfo) -> str:
    """Numeric bounds of the field (`> 0`, `≥ 1`), which Settings enforces at start."""
    parts = []
    for constraint in info.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(constraint, kind):
                parts.append(f"{sign} {getattr(constraint, attr)}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table() -> str:
    """Markdown table of every setting in declaration order: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        meaning = info.description or ""
        bounds = bounds_text(info)
        if bounds:
            meaning = f"{meaning} ({bounds})" if meaning else bounds
        if name in RENAMED:
            meaning += f"; formerly `{RENAMED[name].upper()}`, still read (deprecated)"
        rows.append(f"| `{name.upper()}` | {_cell(default_text(info))} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def replace_table(document: str, new_table: str) -> str:
    """`document` with the text between the markers replaced by `new_table`."""
    head, start, rest = document.partition(START)
    _old, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"markers {START} and {END} not found")
    return f"{head}{START}\n{new_table}{END}{tail}"


def current_table(document: str) -> str:
    """The table between the markers of `document`, as written."""
    _head, _start, rest = document.partition(START)
    return rest.partition(END)[0].lstrip("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="FILE", help="replace the table between the markers")
    args = parser.parse_args(argv)
    if args.write is None:
        print(table(), end="")
        return
    path: Path = args.write
    path.write_text(replace_table(path.read_text(encoding="utf-8"), table()), encoding="utf-8")
    print(f"{path}: configuration table regenerated ({len(Settings.model_fields)} settings)")


if __name__ == "__main__":
    main()
