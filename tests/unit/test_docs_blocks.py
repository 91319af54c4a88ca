"""Every fenced block of the docs is checked somewhere; every link leads somewhere; the front page is short.

`sh` blocks and their `json` answers run against the live stack (tests/integration/test_docs_live.py), as
do the webhook request, its receiver snippet and the Grafana queries there. What no test can run is listed
here with its reason, so a new example cannot slip in unchecked.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

from tests.docblocks import DOCS, ROOT, Block, blocks, json_values, mismatches, runs

LIVE_PAGES = {"README.md", "api.md", "operations.md"}
CHECKED_LIVE_ELSEWHERE = {  # by test_docs_live, beside the pages' commands
    ("docs/api.md", "http"): "the webhook request: a real delivery's headers and body",
    ("docs/api.md", "python"): "the webhook receiver: run on a real delivery, and on a forged one",
    ("docs/operations.md", "promql"): "the Grafana queries: every metric they name is in a live /metrics",
}
NOT_RUN = {  # (page, lang, first line) -> why no test runs it, and what checks it instead
    ("README.md", "shell", "make run"): "starts the service itself; CI runs `make test`",
    (
        "docs/operations.md",
        "shell",
        "docker compose up",
    ): "no Docker engine here; test_compose.py checks the file",
    ("docs/operations.md", "yaml", "scrape_configs:"): "Prometheus's own configuration",
    ("docs/operations.md", "shell", "# a GPU host"): "docker run on GPU hosts: no Docker engine, no GPU here",
    ("docs/operations.md", "shell", "helm repo add"): "a Milvus cluster on Kubernetes: none here",
    ("docs/operations.md", "shell", "export CUDA_VISIBLE_DEVICES"): "workers on a second GPU: no GPU here",
    ("docs/architecture.md", "text", "api/"): "the code map: test_the_code_map_names_what_exists",
    ("docs/architecture.md", "mermaid", "flowchart LR"): "the flow diagram, a drawing",
}


def _not_run(block: Block) -> bool:
    page = str(block.path.relative_to(ROOT))
    return any(
        page == p and block.lang == lang and block.text.startswith(first) for p, lang, first in NOT_RUN
    )


def test_every_block_is_run_checked_or_listed_with_a_reason() -> None:
    unchecked = []
    for path in DOCS:
        paired = {answer.line for _, answer in runs(path) if answer is not None}
        for block in blocks(path):
            page = str(block.path.relative_to(ROOT))
            if block.lang == "sh" and path.name in LIVE_PAGES:
                continue
            if block.lang == "json" and block.line in paired and path.name in LIVE_PAGES:
                continue
            if (page, block.lang) in CHECKED_LIVE_ELSEWHERE or _not_run(block):
                continue
            unchecked.append(block.name)
    assert not unchecked, f"no test checks these blocks; make them runnable or list them: {unchecked}"


def test_every_documented_answer_is_valid_json() -> None:
    for path in DOCS:
        for _, answer in runs(path):
            if answer is not None:
                assert json_values(answer.text), answer.name


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE):
        text = "".join(c for c in heading.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
        found.add(text.replace(" ", "-"))
    return found


def test_every_relative_link_leads_to_a_file_and_heading() -> None:
    broken = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists() or (anchor and anchor not in _anchors(linked)):
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_front_page_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move reference material to docs/"


def test_the_code_map_names_what_exists() -> None:
    (code_map,) = [block for block in blocks(ROOT / "docs" / "architecture.md") if block.lang == "text"]
    folders = re.findall(r"^(\w+)/", code_map.text, re.MULTILINE)
    assert {"api", "common", "workers", "ingestion", "store", "client", "tests"} <= set(folders)
    missing = []
    current = ROOT
    for line in code_map.text.splitlines():
        if match := re.match(r"^(\w+)/", line):
            current = ROOT / match.group(1)
        missing += [
            name
            for name in re.findall(r"\b(\w+\.py)\b", line)
            if not list(current.rglob(name)) and not (ROOT / name).exists()
        ]
        missing += [f"{current.name}/{name}" for name in re.findall(r"\b(\w+)/ ", line)[1:]]
    assert not missing, f"the code map names files that do not exist: {missing}"


def test_shape_matching_fails_on_what_matters() -> None:
    assert not list(mismatches({"a": 1, "s": "x…", "t": "…"}, {"a": 1, "s": "xyz", "t": "", "extra": 2}))
    assert list(mismatches({"signature": "sha256=…"}, {"signature": "md5=00"}))
    assert not list(mismatches({"at": "2026-11-24T10:15:02.310Z"}, {"at": "2027-01-01T00:00:00Z"}))
    assert list(mismatches({"at": "2026-11-24T10:15:02.310Z"}, {"at": "yesterday"}))
    assert not list(
        mismatches({"score": 0.5, "items": [{"id": "a"}]}, {"score": 3, "items": [{"id": "a"}, {}]})
    )
    assert list(mismatches({"a": 1}, {"a": 2}))  # a count differs
    assert list(mismatches({"state": "succeeded"}, {"state": "failed"}))
    assert list(mismatches({"a": 1}, {"b": 1}))  # a renamed field
    assert list(mismatches({"flag": True}, {"flag": 1}))
    assert list(mismatches([{"id": "a"}, {"id": "b"}], [{"id": "a"}]))  # fewer items than documented
    assert list(mismatches({"n": 0.5}, {"n": "0.5"}))


def _inline_code() -> list[tuple[str, str]]:
    """(page, code) for every inline code span of the docs outside fenced blocks."""
    spans = []
    for path in DOCS:
        text = re.sub(
            r"^[ \t]*```.*?^[ \t]*```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL | re.M
        )
        spans += [(path.name, code) for code in re.findall(r"`([^`\n]+)`", text)]
    return spans


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.MULTILINE))
    named = {target for _, code in _inline_code() for target in re.findall(r"\bmake ([\w-]+)", code)}
    assert named and not named - targets, f"not in the Makefile: {sorted(named - targets)}"


def test_every_inline_command_runs_and_takes_the_options_shown() -> None:
    """`python -m M ...` and `quarry C ...` in prose: the module answers --help and knows every option."""
    commands: dict[tuple[str, ...], set[str]] = {}
    for _, code in _inline_code():
        for found in re.finditer(
            r"(?:python -m ([\w.]+)|\bquarry (ingest|ask|jobs|collections))((?: [^;|&]*)?)", code
        ):
            argv = ("-m", found.group(1)) if found.group(1) else ("-m", "client", found.group(2))
            commands.setdefault(argv, set()).update(re.findall(r"(--[\w-]+)", found.group(3)))
    assert len(commands) >= 5, commands
    for argv, options in commands.items():
        assert importlib.util.find_spec(argv[1]) is not None, f"no module {argv[1]}"
        if not options:  # nothing to check but that it exists (`python -m devstack` would start the service)
            continue
        done = subprocess.run(
            [sys.executable, *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=ROOT,
        )
        assert done.returncode == 0, (argv, done.stderr[-500:])
        missing = {option for option in options if option not in done.stdout}
        assert not missing, f"python {' '.join(argv)} does not take {sorted(missing)}"
