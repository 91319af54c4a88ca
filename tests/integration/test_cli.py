"""The command line against the live service: ingest, ask, jobs, collections; human and --json output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client import QuarryClient
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


def test_the_installed_quarry_command(stack: Stack) -> None:
    quarry = Path(sys.executable).with_name("quarry")
    assert quarry.exists(), "`make` installs the console script (pip install --editable .)"
    argv = [str(quarry), "collections", "--json", "--url", stack.url, "--api-key", KEYS["main"][0]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout)["items"], list)


def test_the_client_pages_through_a_collection(stack: Stack) -> None:
    docs = [{"id": f"page-{i}", "text": f"Document number {i} about paging."} for i in range(7)]
    assert stack.run("/api/v1/documents", json={"documents": docs, "collection": "cli-pages"})["state"] == (
        "succeeded"
    )
    client = QuarryClient(stack.url, api_key=KEYS["main"][0])
    ids = [doc["doc_id"] for doc in client.documents("cli-pages", page_size=3)]
    assert sorted(ids) == sorted(doc["id"] for doc in docs)
