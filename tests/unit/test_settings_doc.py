"""docs/configuration.md's table is generated from Settings; these tests keep the two from drifting."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import settings_doc
from common.settings import Settings

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_says_what_it_means() -> None:
    missing = [name for name, info in Settings.model_fields.items() if not info.description]
    assert not missing, f"add description= to these fields in common/settings.py: {missing}"


def test_the_documented_table_is_the_generated_one() -> None:
    written = settings_doc.current_table(CONFIGURATION.read_text(encoding="utf-8"))
    assert written == settings_doc.table(), (
        f"docs/configuration.md's table differs from common/settings.py; run: {settings_doc.COMMAND}"
    )


def test_table_has_one_row_per_setting_in_declaration_order() -> None:
    rows = settings_doc.table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [name.upper() for name in Settings.model_fields]


def test_defaults_are_written_as_the_environment_takes_them() -> None:
    fields = Settings.model_fields
    assert settings_doc.default_text(fields["broker_url"]) == "unset"
    assert settings_doc.default_text(fields["cpu_bf16"]) == "`true`"
    assert settings_doc.default_text(fields["api_keys"]) == "`[]`"
    assert settings_doc.default_text(fields["data_dir"]) == "`var`"
    assert settings_doc.bounds_text(fields["max_ask_queue"]) == "≥ 1"
    assert settings_doc.bounds_text(fields["max_wait_s"]) == "> 0"


def test_write_replaces_only_the_text_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n{settings_doc.START}\nold | table\n{settings_doc.END}\nafter\n", encoding="utf-8")
    settings_doc.main(["--write", str(doc)])
    text = doc.read_text(encoding="utf-8")
    assert text.startswith(f"intro\n{settings_doc.START}\n| variable |")
    assert text.endswith(f"|\n{settings_doc.END}\nafter\n")
    assert settings_doc.current_table(text) == settings_doc.table()


def test_a_document_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        settings_doc.replace_table("no table here", settings_doc.table())


def test_cells_escape_pipes() -> None:
    assert settings_doc._cell("a | b") == "a \\| b"
