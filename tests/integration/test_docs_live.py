"""The docs' commands, run against the live stack, each answering what the docs say it answers.

Every `sh` block of a page runs in order in one bash session (so `job=$(...)` carries over), as a reader
would paste them: `localhost:8000` is the stack, `curl` sends the stack's API key (the docs show the open
API of `make run`), `quarry` is the installed command line. The `json` block under a command is its
documented answer, matched by shape (tests/docblocks.py). Blocks no test can run (Docker, `make run`)
are listed with their reason in tests/unit/test_docs_blocks.py, which fails on any other block.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.docblocks import ROOT, Block, blocks, json_values, mismatches, runs
from tests.integration.conftest import KEYS, WEBHOOK_SECRET, Stack
from tests.integration.test_webhooks import DOCUMENTS, Received, Receiver, delivery, submit

pytestmark = pytest.mark.integration

API_PAGE = ROOT / "docs" / "api.md"
LIVE_PAGES = [ROOT / "README.md", API_PAGE, ROOT / "docs" / "operations.md"]
_MARK = "@@quarry-docs-block@@"


def _script(pairs: list[tuple[Block, Block | None]], address: str) -> str:
    prelude = [
        "set -euo pipefail",
        'curl() { command curl -H "Authorization: Bearer $QUARRY_API_KEY" "$@"; }',
    ]
    body = [f"{block.text.replace('localhost:8000', address)}\nprintf '\\n{_MARK}\\n'" for block, _ in pairs]
    return "\n".join(prelude + body)


def _run(pairs: list[tuple[Block, Block | None]], stack: Stack, cwd: Path) -> list[str]:
    address = urlparse(stack.url).netloc
    (cwd / ".venv").symlink_to(Path(sys.prefix))  # the docs call .venv/bin/python from the checkout
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "QUARRY_URL": stack.url,
        "QUARRY_API_KEY": KEYS["main"][0],
    }
    done = subprocess.run(
        ["bash", "-c", _script(pairs, address)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outputs = done.stdout.split(f"\n{_MARK}\n")
    assert done.returncode == 0, (
        f"a documented command failed ({done.returncode}): {done.stderr}\n{outputs[-1]}"
    )
    return outputs[: len(pairs)]


@pytest.mark.parametrize("page", LIVE_PAGES, ids=lambda page: page.name)
def test_every_documented_command_answers_as_documented(stack: Stack, page: Path, tmp_path: Path) -> None:
    pairs = runs(page)
    assert pairs, f"{page} has no command to run"
    outputs = _run(pairs, stack, tmp_path)
    assert len(outputs) == len(pairs), outputs
    differ = []
    for (block, answer), output in zip(pairs, outputs, strict=True):
        if answer is None:
            continue
        documented, real = json_values(answer.text), json_values(output)
        if len(real) != len(documented):
            differ.append(f"{block.name} printed {output!r}; {answer.name} shows {answer.text}")
            continue
        problems = [p for d, r in zip(documented, real, strict=True) for p in mismatches(d, r)]
        if problems:
            differ.append(f"{block.name} answered {output}; {answer.name} differs: {problems}")
    assert not differ, "\n\n".join(differ)


def _only(page: Path, lang: str) -> Block:
    (block,) = [block for block in blocks(page) if block.lang == lang]
    return block


@pytest.fixture(scope="module")
def delivered(stack: Stack) -> Iterator[Received]:
    """One real webhook delivery of an answered question."""
    receiver = Receiver()
    try:
        stack.run("/api/v1/documents", json={"collection": "hooked-docs", "documents": DOCUMENTS})
        url = receiver.url()
        job_id = submit(
            stack,
            "/api/v1/ask",
            {"question": "what pulls the tides?", "collection": "hooked-docs", "callback_url": url},
        )
        delivery(stack, job_id)
        (post,) = receiver.posts(url)
        yield post
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_the_documented_webhook_request_is_what_a_receiver_gets(delivered: Received) -> None:
    head, _, body = _only(API_PAGE, "http").text.partition("\n\n")
    request_line, *header_lines = head.splitlines()
    assert request_line.startswith("POST ")
    headers = dict(line.split(": ", 1) for line in header_lines)
    problems = list(mismatches(headers, delivered.headers)) + list(
        mismatches(json.loads(body), delivered.json)
    )
    assert not problems, f"docs/api.md's webhook request differs from a real one: {problems}"


def test_the_documented_receiver_takes_a_real_delivery_and_refuses_a_forged_one(
    delivered: Received,
) -> None:
    seen: list[str] = []
    scope: dict[str, Any] = {"WEBHOOK_SECRET": WEBHOOK_SECRET, "seen_before": lambda id_: id_ in seen}
    exec(_only(API_PAGE, "python").text, scope)  # the snippet as a reader would paste it
    assert scope["receive"](delivered.body, delivered.headers) is None
    with pytest.raises(PermissionError):
        scope["receive"](delivered.body.replace(b"succeeded", b"cancelled"), delivered.headers)


def test_every_metric_the_grafana_queries_name_is_served(stack: Stack, delivered: Received) -> None:
    queries = _only(ROOT / "docs" / "operations.md", "promql").text
    served = stack.get("/metrics").text
    samples: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^(quarry_\w+)(?:\{([^}]*)\})?", served, re.MULTILINE):
        samples.setdefault(name, set()).update(re.findall(r"(\w+)=", labels))
    for name in re.findall(r"^# TYPE (quarry_\w+) gauge", served, re.MULTILINE):  # served, maybe empty now
        samples.setdefault(name, set())
    named = set(re.findall(r"\b(quarry_\w+)", queries))
    assert named and not named - set(samples), f"not served: {sorted(named - set(samples))}"
    for name, selector in re.findall(r"\b(quarry_\w+)\{([^}]*)\}", queries):
        assert set(re.findall(r"(\w+)=", selector)) <= samples[name], (name, selector, samples[name])
