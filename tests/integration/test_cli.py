"""The command line against the live service: ingest, ask, jobs, collections; human and --json output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli import main
from tests.integration.conftest import KEYS, Stack


def _cli(stack: Stack, *args: str) -> list[str]:
    return ["--url", stack.url, "--api-key", KEYS["main"][0], *args]


def test_ingest_ask_jobs_and_collections(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "lighthouse.txt").write_text("Lighthouses focus their beams with Fresnel lenses.")
    (tmp_path / "bees.md").write_text("# Bees\nHoney bees dance to tell the hive where flowers are.")
    assert main(_cli(stack, "ingest", str(tmp_path), "--collection", "cli-docs", "--wait")) == 0
    capsys.readouterr()

    assert main(_cli(stack, "ask", "How do lighthouses focus light?", "--collection", "cli-docs")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(" 1. lighthouse.txt") and "Fresnel" in out

    assert main(_cli(stack, "--json", "ask", "bees", "--collection", "cli-docs", "--top-k", "1")) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "succeeded" and len(job["result"]["passages"]) == 1

    assert main(_cli(stack, "--json", "jobs", job["job_id"])) == 0
    assert json.loads(capsys.readouterr().out)["job_id"] == job["job_id"]
    assert main(_cli(stack, "jobs", job["job_id"], "--wait")) == 0
    assert "succeeded" in capsys.readouterr().out

    assert main(_cli(stack, "collections")) == 0
    assert any(line.startswith("cli-docs") for line in capsys.readouterr().out.splitlines())


def test_errors_are_reported_with_the_servers_reason(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_cli(stack, "jobs", "0" * 32)) == 2
    assert "404" in capsys.readouterr().err
    assert main(["--url", stack.url, "--api-key", "qk_wrong", "collections"]) == 2
    assert "401" in capsys.readouterr().err
