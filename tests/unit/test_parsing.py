"""Parsing uploads into Documents, the JSON-lines store, and file-name sanitising."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import DocumentError, InvalidRequest
from common.types import Document
from ingestion.parsing import (
    SUPPORTED_SUFFIXES,
    markdown_title,
    parse_file,
    read_documents_jsonl,
    sanitize_filename,
    write_documents_jsonl,
)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_supported_suffixes() -> None:
    assert set(SUPPORTED_SUFFIXES) >= {".txt", ".md"}


def test_txt_has_no_title(tmp_path: Path) -> None:
    path = write(tmp_path, "stored.bin", b"Short first line\nMore text here.\n")
    doc = parse_file(path, name="notes.txt")
    assert doc == Document(id="notes.txt", text="Short first line\nMore text here.\n", title="", metadata={})


def test_suffix_is_case_insensitive_and_taken_from_name(tmp_path: Path) -> None:
    path = write(tmp_path, "upload-123", b"# Heading\nbody")
    assert parse_file(path, name="README.MD").title == "Heading"


def test_crlf_is_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", b"one\r\ntwo\rthree")
    assert parse_file(path, name="a.txt").text == "one\ntwo\nthree"


def test_markdown_title_from_first_atx_heading(tmp_path: Path) -> None:
    path = write(tmp_path, "g.md", b"Intro line\n\n#  The Quarry Guide ##\n\n## Section\ntext\n")
    doc = parse_file(path, name="guide.md")
    assert doc.title == "The Quarry Guide"
    assert doc.text.startswith("Intro line\n")


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("no heading at all\n", ""),
        ("#hashtag is not a heading\n", ""),
        ("    # indented code, not a heading\n", ""),
        ("#\n\n## Real\n", "Real"),
        ("```bash\n# install deps\n```\n# After Code\n", "After Code"),
        ("~~~\n# inside tilde fence\n~~~\n", ""),
        ("---\n# yaml comment\ntitle: x\n---\n# Doc\n", "Doc"),
        ("Setext Title\n============\n", ""),
        ("### Third level first\n# Top\n", "Third level first"),
    ],
)
def test_markdown_title_rules(text: str, title: str) -> None:
    assert markdown_title(text) == title


def test_markdown_without_heading(tmp_path: Path) -> None:
    path = write(tmp_path, "m.md", b"just text")
    assert parse_file(path, name="m.md").title == ""


def test_utf8_bom_is_accepted_and_removed(tmp_path: Path) -> None:
    path = write(tmp_path, "b.md", b"\xef\xbb\xbf# Caf\xc3\xa9\ntext")
    doc = parse_file(path, name="b.md")
    assert doc.text == "# Café\ntext"
    assert doc.title == "Café"


@pytest.mark.parametrize(("data", "offset"), [(b"abc\xffdef", 3), (b"\xef\xbb\xbfab\xc3(", 5), (b"\x80", 0)])
def test_non_utf8_reports_byte_offset(tmp_path: Path, data: bytes, offset: int) -> None:
    path = write(tmp_path, "x.txt", data)
    with pytest.raises(DocumentError) as info:
        parse_file(path, name="x.txt")
    assert info.value.detail == f"x.txt: not valid UTF-8 text (byte offset {offset})"


def test_nul_bytes_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "n.txt", b"text\x00more")
    with pytest.raises(DocumentError, match=r"n.txt: contains NUL bytes.*byte offset 4"):
        parse_file(path, name="n.txt")


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"  \n\t\n"])
def test_empty_file_is_rejected(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "e.txt", data)
    with pytest.raises(DocumentError, match=r"^e.txt: file (is empty|contains only whitespace)"):
        parse_file(path, name="e.txt")


@pytest.mark.parametrize(("name", "shown"), [("report.exe", "'.exe'"), ("Makefile", "none")])
def test_unsupported_suffix(tmp_path: Path, name: str, shown: str) -> None:
    path = write(tmp_path, "u", b"%PDF-1.7")
    with pytest.raises(DocumentError) as info:
        parse_file(path, name=name)
    assert f"suffix {shown}" in info.value.detail
    assert ".md" in info.value.detail and ".txt" in info.value.detail


def test_jsonl_roundtrip(tmp_path: Path) -> None:
    docs = [
        Document(
            id="a",
            text="line one\nline two\r\n\u2028sep\u2029 end",
            title="Tï",
            metadata={"n": 1, "t": ["x"]},
        ),
        Document(id="b", text="", title="", metadata={}),
        Document(id="c/δ", text='quotes " and \\ backslash', metadata={"nested": {"ok": True, "v": None}}),
    ]
    path = tmp_path / "sub" / "docs.jsonl"
    assert write_documents_jsonl(path, docs) == 3
    assert list(read_documents_jsonl(path)) == docs
    assert len(path.read_bytes().split(b"\n")) == 4  # one line per document plus the final newline
    assert [p.name for p in path.parent.iterdir()] == ["docs.jsonl"]  # no temporary file left


def test_jsonl_write_accepts_generator_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    assert write_documents_jsonl(path, (Document(id=str(i), text="t") for i in range(5))) == 5
    assert [d.id for d in read_documents_jsonl(path)] == ["0", "1", "2", "3", "4"]
    assert write_documents_jsonl(path, []) == 0
    assert list(read_documents_jsonl(path)) == []


def test_jsonl_unserialisable_metadata_is_invalid_request(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    with pytest.raises(InvalidRequest, match="document bad: metadata"):
        write_documents_jsonl(
            path, [Document(id="ok", text="t"), Document(id="bad", text="t", metadata={"x": {1, 2}})]
        )
    with pytest.raises(InvalidRequest):
        write_documents_jsonl(path, [Document(id="nan", text="t", metadata={"x": float("nan")})])
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_jsonl_defaults_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", b'{"id": "a", "text": "x"}\n\n{"id": "b", "text": "y", "extra": 1}\n')
    assert list(read_documents_jsonl(path)) == [Document(id="a", text="x"), Document(id="b", text="y")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "not a valid JSON line"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"text": "x"}', "'id' must be a non-empty string"),
        (b'{"id": "", "text": "x"}', "'id' must be a non-empty string"),
        (b'{"id": 5, "text": "x"}', "'id' must be a non-empty string"),
        (b'{"id": "a"}', "'text' must be a string"),
        (b'{"id": "a", "text": 3}', "'text' must be a string"),
        (b'{"id": "a", "text": "x", "title": null}', "'title' must be a string"),
        (b'{"id": "a", "text": "x", "metadata": [1]}', "'metadata' must be a JSON object"),
        (b'{"id": "a", "text": "\xff"}', "not a valid JSON line"),
    ],
)
def test_jsonl_bad_line_names_line_number(tmp_path: Path, line: bytes, message: str) -> None:
    good = json.dumps({"id": "ok", "text": "fine"}).encode()
    path = write(tmp_path, "d.jsonl", good + b"\n\n" + line + b"\n" + good + b"\n")
    docs = read_documents_jsonl(path)
    assert next(docs).id == "ok"
    with pytest.raises(DocumentError) as info:
        next(docs)
    assert info.value.detail.startswith("d.jsonl line 3: ")
    assert message in info.value.detail


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.txt", "report.txt"),
        ("My Notes - v2.md", "My Notes - v2.md"),
        ("../../etc/passwd", "passwd"),
        ("a/b\\c.txt", "c.txt"),
        ("C:\\Users\\me\\doc.md", "doc.md"),
        (".hidden", "hidden"),
        ("...", "file"),
        ("", "file"),
        ("dir/", "file"),
        ("  spaced.txt  ", "spaced.txt"),
        ("résumé.txt", "r_sum_.txt"),
        ("日本語.md", "___.md"),
        ("emoji😀.txt", "emoji_.txt"),
        ("tab\tnew\nline\x00.txt", "tab_new_line_.txt"),
        ("semi;colon|pipe$.txt", "semi_colon_pipe_.txt"),
    ],
)
def test_sanitize_filename(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected
    assert sanitize_filename(expected) == expected  # idempotent


def test_sanitize_filename_caps_length_keeping_suffix() -> None:
    long_name = "a" * 500 + ".md"
    safe = sanitize_filename(long_name)
    assert len(safe) == 200 and safe.endswith(".md") and safe.startswith("aaa")
    assert sanitize_filename("x." + "y" * 400) == ("x." + "y" * 400)[:200]
    unicode_long = "é" * 300 + ".txt"
    assert sanitize_filename(unicode_long) == "_" * 196 + ".txt"
    assert sanitize_filename("a" * 200) == "a" * 200


def test_parsing_does_not_import_torch() -> None:
    code = (
        "import sys, ingestion.parsing; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
