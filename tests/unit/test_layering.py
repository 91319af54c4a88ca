"""Imports flow one way: `api`, `workers` -> `ingestion`, `store` -> `common`; `client` stands alone.

Read from the source (every import statement, at any depth), so a shortcut taken inside a function counts
as much as one at the top of a module. `celeryconfig` is the one Celery configuration both sides build
their app from; `devstack` and `bench` are tools around the service, not layers of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "api": {"common", "ingestion", "store", "celeryconfig"},
    "workers": {"common", "ingestion", "store", "celeryconfig"},
    "ingestion": {"common"},
    "store": {"common"},
    "common": set(),
    "celeryconfig": {"common"},
    "client": set(),
}
TOP_LEVEL = {*ALLOWED, "devstack", "bench", "tests"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & TOP_LEVEL


def _sources(layer: str) -> list[Path]:
    single = ROOT / f"{layer}.py"
    return [single] if single.exists() else sorted((ROOT / layer).rglob("*.py"))


def test_imports_flow_one_way() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {target}"
        for layer, allowed in ALLOWED.items()
        for path in _sources(layer)
        for target in sorted(_imports(path) - allowed - {layer})
    ]
    assert not wrong, wrong


def test_every_layer_has_sources() -> None:
    assert all(_sources(layer) for layer in ALLOWED)
