"""The command line's arguments: the issue's spelling works, options go before or after the command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from client.cli import build_parser, main


def test_options_before_or_after_the_command() -> None:
    before = build_parser().parse_args(["--json", "--url", "http://q:1", "ask", "why?", "--top-k", "5"])
    after = build_parser().parse_args(["ask", "why?", "--top-k", "5", "--json", "--url", "http://q:1"])
    for args in (before, after):
        assert (args.json, args.url, args.question, args.top_k) == (True, "http://q:1", "why?", 5)


def test_defaults_without_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUARRY_URL", raising=False)
    args = build_parser().parse_args(["jobs", "abc"])
    assert (args.json, args.url, args.wait) == (False, "http://127.0.0.1:8000", False)


def test_an_unreachable_service_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collections", "--url", "http://127.0.0.1:1"]) == 2
    assert "cannot reach http://127.0.0.1:1" in capsys.readouterr().err


def test_ingest_passes_everything_after_it_to_the_bulk_loader(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--help"])  # was refused as an unrecognised argument
    assert exit_info.value.code == 0
    assert "--on-duplicate" in capsys.readouterr().out


def test_an_unknown_option_of_another_command_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["collections", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_bulk_loaders_former_name_still_runs_it_and_says_it_moved() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingestion", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "deprecated: use python -m client ingest" in done.stderr
    assert "--on-duplicate" in done.stdout
