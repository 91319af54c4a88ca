"""Upload formats beyond plain text: HTML, PDF, Word, JSON, JSON lines and CSV.

Every input is built here in tmp_path; a bad document must become a Failure with a readable
reason while the other documents of the same file still come through.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import docx
import pytest
from pypdf import PdfReader

from common.errors import DocumentError
from common.types import Document
from ingestion.parsing import (
    SUPPORTED_SUFFIXES,
    Failure,
    Item,
    ParseOptions,
    iter_file_documents,
    parse_file,
)
from ingestion.validation import checked


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def items(tmp_path: Path, name: str, data: bytes | str, options: ParseOptions | None = None) -> list[Item]:
    path = write(tmp_path, f"stored-{name}", data)
    return list(iter_file_documents(path, name=name, options=options or ParseOptions()))


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica Tj text operator per non-empty page, exact xref offsets."""
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    kids, number = [], 4
    for text in pages:
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        objects[number] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content)
        objects[number + 1] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % number
        )
        kids.append(b"%d 0 R" % (number + 1))
        number += 2
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    info = b""
    if title is not None:
        objects[number], info = b"<< /Title (%s) >>" % title.encode(), b" /Info %d 0 R" % number
        number += 1
    out, offsets = bytearray(b"%PDF-1.4\n"), {}
    for key in sorted(objects):
        offsets[key] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (key, objects[key])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % number
    out += b"".join(b"%010d 00000 n \n" % offsets[key] for key in range(1, number))
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (number, info, xref)
    return bytes(out)


def test_supported_suffixes_list_every_format() -> None:
    expected = {".txt", ".md", ".html", ".htm", ".pdf", ".docx", ".json", ".jsonl", ".csv", ".zip"}
    assert set(SUPPORTED_SUFFIXES) == expected
    assert list(SUPPORTED_SUFFIXES) == sorted(SUPPORTED_SUFFIXES)


# --- HTML ---

PAGE = """<!doctype html><html><head><title> The  Quarry Guide </title>
<style>body { color: red }</style><script>var tracking = "secret";</script></head>
<body><nav><a href="/">Home</a> <a href="/about">About</a></nav><header>Site banner</header>
<main><h1>Getting started</h1><p>Install <b>Quarry</b> first.<br>Then run it.</p>
<!-- a comment --><ul><li>one</li><li>two</li></ul>
<table><tr><td>cell-a</td><td>cell-b</td></tr></table><div hidden>hidden text</div></main>
<aside>Related links</aside><footer>Copyright</footer><script>more()</script></body></html>"""


def test_html_main_text_without_markup_scripts_styles_or_navigation(tmp_path: Path) -> None:
    doc = parse_file(write(tmp_path, "page", PAGE), name="guide.html")
    assert doc.id == "guide.html" and doc.title == "The Quarry Guide"
    assert "Install Quarry first.\nThen run it." in doc.text
    assert "cell-a cell-b" in doc.text and "one" in doc.text
    for noise in (
        "tracking",
        "color",
        "Home",
        "Site banner",
        "Copyright",
        "Related",
        "hidden text",
        "comment",
        "<",
    ):
        assert noise not in doc.text


def test_html_keeps_article_headers_and_pages_wrapped_in_a_form(tmp_path: Path) -> None:
    page = (
        "<body><form action='/post'><header>Banner</header><article><header><h2>Byline</h2></header>"
        "<p>Story text.</p><input value='Search'></article></form></body>"
    )
    doc = parse_file(write(tmp_path, "p", page), name="story.html")
    assert doc.text == "Byline\n\nStory text."


def test_html_title_falls_back_to_first_h1_and_charset_is_honoured(tmp_path: Path) -> None:
    page = '<html><head><meta charset="iso-8859-1"></head>'
    page += "<body><h1>Caf\xe9 menu</h1><p>Cr\xe8me br\xfbl\xe9e</p>"
    doc = parse_file(write(tmp_path, "p", page.encode("latin-1")), name="menu.htm")
    assert doc.title == "Café menu"
    assert doc.text == "Café menu\n\nCrème brûlée"


def test_html_without_text_fails_alone(tmp_path: Path) -> None:
    page = "<html><head><title>Empty</title><script>x()</script></head><body><nav>menu</nav></body></html>"
    assert items(tmp_path, "empty.html", page) == [
        Failure("empty.html", "empty.html: no text content after removing markup")
    ]


# --- PDF ---


def test_pdf_text_layer_and_title(tmp_path: Path) -> None:
    data = make_pdf(["Hello Quarry world", "", "Second page"], title="The Manual")
    path = write(tmp_path, "m.pdf", data)
    assert "Hello Quarry world" in PdfReader(path).pages[0].extract_text()  # the fixture really is a PDF
    doc = parse_file(path, name="manual.pdf")
    assert doc == Document(id="manual.pdf", text="Hello Quarry world\n\nSecond page", title="The Manual")


def test_pdf_without_text_layer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"^scan\.pdf: no text layer \(scanned PDF\?\)"):
        parse_file(write(tmp_path, "s.pdf", make_pdf([""])), name="scan.pdf")


@pytest.mark.parametrize("data", [b"%PDF-1.4\ngarbage", b"not a pdf at all", make_pdf(["text"])[:150]])
def test_corrupt_pdf_fails_alone(tmp_path: Path, data: bytes) -> None:
    [failure] = items(tmp_path, "broken.pdf", data)
    assert isinstance(failure, Failure) and failure.doc_id == "broken.pdf"
    assert failure.reason.startswith("broken.pdf: not a readable PDF (")


# --- Word ---


def make_docx(path: Path, *, title: str = "") -> Path:
    word = docx.Document()
    word.core_properties.title = title
    word.add_paragraph("Preface text.")
    word.add_heading("Chapter One", level=1)
    word.add_paragraph("Body paragraph.")
    table = word.add_table(rows=2, cols=3)
    for column, text in enumerate(("name", "size", "unit")):
        table.cell(0, column).text = text
    table.cell(1, 0).merge(table.cell(1, 1)).text = "merged"
    table.cell(1, 2).text = "kg"
    word.add_paragraph("After the table.")
    word.save(str(path))
    return path


def test_docx_paragraphs_and_table_cells_in_order(tmp_path: Path) -> None:
    doc = parse_file(make_docx(tmp_path / "r.docx"), name="report.docx")
    assert (
        doc.text == "Preface text.\nChapter One\nBody paragraph.\nname size unit\nmerged kg\nAfter the table."
    )
    assert doc.title == "Chapter One"


def test_docx_title_from_core_properties(tmp_path: Path) -> None:
    assert (
        parse_file(make_docx(tmp_path / "r.docx", title="Annual Report"), name="r.docx").title
        == "Annual Report"
    )


def test_corrupt_docx_fails_alone(tmp_path: Path) -> None:
    [failure] = items(tmp_path, "broken.docx", b"PK\x03\x04 truncated")
    assert isinstance(failure, Failure)
    assert failure.reason.startswith("broken.docx: not a readable Word (.docx) document (")


def test_docx_bomb_is_refused_before_loading(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"\0" * (2 * 1024 * 1024))
    with pytest.raises(
        DocumentError, match=r"^bomb\.docx: refused: member 'word/document\.xml' expands \d+x"
    ):
        parse_file(path, name="bomb.docx")


# --- JSON ---


def test_json_list_of_records(tmp_path: Path) -> None:
    records = [
        {"id": "a", "title": "A", "text": "alpha", "metadata": {"lang": "en"}},
        {"text": "no id"},
        {"id": 7, "text": "numbered", "extra": "ignored"},
        {"id": "bad", "text": 5},
        "not an object",
    ]
    assert items(tmp_path, "docs.json", json.dumps(records)) == [
        Document(id="a", text="alpha", title="A", metadata={"lang": "en"}),
        Document(id="docs.json#item2", text="no id"),
        Document(id="7", text="numbered"),
        Failure("bad", "docs.json item 4: 'text' must be a string, got a number"),
        Failure("docs.json#item5", "docs.json item 5: expected a JSON object, got a string"),
    ]


def test_json_single_object_uses_file_name_as_default_id(tmp_path: Path) -> None:
    assert items(tmp_path, "one.json", '{"title": "T", "text": "body"}') == [
        Document(id="one.json", text="body", title="T")
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("[1, 2", "bad.json: not valid JSON (Expecting ',' delimiter: line 1 column 6 (char 5))"),
        ('"just a string"', "bad.json: expected a JSON array of objects or one object, got a string"),
        ("[]", "bad.json: contains no documents"),
        ("", "bad.json: file is empty"),
    ],
)
def test_json_file_level_problems_fail_the_file(tmp_path: Path, data: str, reason: str) -> None:
    assert items(tmp_path, "bad.json", data) == [Failure("bad.json", reason)]


# --- JSON lines ---


def test_jsonl_beir_corpus_with_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "doc1", "title": "First", "text": "one"}),
        "",
        "{broken json",
        json.dumps({"id": "doc2", "text": "two", "metadata": {"k": 1}}),
        json.dumps({"_id": "doc3", "title": None, "text": "   "}),
        json.dumps({"text": "no id", "metadata": None}),
        '{"_id": "nan", "text": "x", "metadata": {"v": NaN}}',
    ]
    result = items(tmp_path, "corpus.jsonl", "\ufeff" + "\n".join(lines) + "\n")
    first, broken = result[:2]
    assert first == Document(id="doc1", text="one", title="First")
    assert isinstance(broken, Failure) and broken.doc_id == "corpus.jsonl#line3"
    assert broken.reason.startswith("corpus.jsonl line 3: not valid JSON (Expecting property name")
    assert result[2:] == [
        Document(id="doc2", text="two", metadata={"k": 1}),
        Failure("doc3", "corpus.jsonl line 5: 'text' is empty"),
        Document(id="corpus.jsonl#line6", text="no id"),
        Failure("corpus.jsonl#line7", "corpus.jsonl line 7: not valid JSON (NaN is not allowed)"),
    ]


def test_jsonl_invalid_utf8_line_fails_alone(tmp_path: Path) -> None:
    result = items(tmp_path, "c.jsonl", b'{"id": "ok", "text": "fine"}\n{"id": "x", "text": "\xff"}\n')
    assert result == [
        Document(id="ok", text="fine"),
        Failure("c.jsonl#line2", "c.jsonl line 2: not valid UTF-8 text (byte offset 21)"),
    ]


def test_duplicate_ids_in_one_file_keep_the_first(tmp_path: Path) -> None:
    """Parsers yield every record; the upload's check (`ingestion.validation.checked`) fails the copies."""
    data = '{"id": "a", "text": "first"}\n{"id": "a", "text": "second"}\n'
    parsed = items(tmp_path, "d.jsonl", data)
    assert parsed == [Document(id="a", text="first"), Document(id="a", text="second")]
    assert list(checked(parsed, 1024)) == [
        Document(id="a", text="first"),
        Failure("a (copy 2)", "duplicate document id 'a' in this upload; only the first is kept"),
    ]


# --- CSV ---


def test_csv_chosen_columns_metadata_and_row_ids(tmp_path: Path) -> None:
    data = 'key,headline,body,lang,year\nk1,Hello,"multi\nline body",en,2024\n,No key,second body,de,\n\n'
    options = ParseOptions(text_column="body", id_column="key", title_column="headline")
    assert items(tmp_path, "rows.csv", data, options) == [
        Document(id="k1", text="multi\nline body", title="Hello", metadata={"lang": "en", "year": "2024"}),
        Document(id="rows.csv#row2", text="second body", title="No key", metadata={"lang": "de", "year": ""}),
    ]


def test_csv_defaults_semicolons_and_missing_id_column(tmp_path: Path) -> None:
    data = "\ufefftext;source\nfirst;web\nsecond;mail\n"
    assert items(tmp_path, "s.csv", data) == [
        Document(id="s.csv#row1", text="first", metadata={"source": "web"}),
        Document(id="s.csv#row2", text="second", metadata={"source": "mail"}),
    ]


def test_csv_bad_rows_fail_alone(tmp_path: Path) -> None:
    data = "id,text\na,fine\nb,\nc,too,many\nd,also fine\n"
    assert items(tmp_path, "r.csv", data) == [
        Document(id="a", text="fine"),
        Failure("b", "r.csv row 2 (line 3): column 'text' is empty"),
        Failure("c", "r.csv row 3 (line 4): 3 fields but the header has 2 columns"),
        Document(id="d", text="also fine"),
    ]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (ParseOptions(), "data.csv: no text column 'text'; columns: 'id', 'body', 'lang'"),
        (ParseOptions(text_column="body", title_column="name"), "data.csv: no title column 'name'; columns:"),
    ],
)
def test_csv_missing_column_lists_the_columns(tmp_path: Path, options: ParseOptions, reason: str) -> None:
    [failure] = items(tmp_path, "data.csv", "id,body,lang\n1,hello,en\n", options)
    assert isinstance(failure, Failure) and failure.doc_id == "data.csv"
    assert failure.reason.startswith(reason)


def test_csv_header_only_has_no_documents(tmp_path: Path) -> None:
    assert items(tmp_path, "h.csv", "id,text\n") == [Failure("h.csv", "h.csv: contains no documents")]


# --- the multi-document API around single-document formats ---


def test_single_document_file_yields_one_document(tmp_path: Path) -> None:
    assert items(tmp_path, "notes.md", "# Notes\nbody") == [
        Document(id="notes.md", text="# Notes\nbody", title="Notes")
    ]


def test_unsupported_file_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    [failure] = items(tmp_path, "photo.jpg", b"\xff\xd8")
    assert isinstance(failure, Failure) and failure.doc_id == "photo.jpg"
    assert "suffix '.jpg'" in failure.reason and ".pdf" in failure.reason


@pytest.mark.parametrize("name", ["rows.csv", "docs.json", "corpus.jsonl", "bundle.zip"])
def test_parse_file_points_multi_document_formats_to_iter_file_documents(tmp_path: Path, name: str) -> None:
    with pytest.raises(DocumentError, match="holds many documents; read it with iter_file_documents"):
        parse_file(write(tmp_path, "x", b"data"), name=name)
