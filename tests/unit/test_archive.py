"""Zip uploads: members are documents, unsafe archives are refused whole, zip bombs never expand.

Every archive is built here with zipfile; bombs use zeros, which deflate ~1000x, so they stay small.
"""

from __future__ import annotations

import stat
import tempfile
import zipfile
from pathlib import Path

import pytest

import ingestion.archive
from common.errors import DocumentError
from common.types import Document
from ingestion.archive import ArchiveLimits, iter_zip_members, list_zip_members
from ingestion.parsing import Failure, iter_file_documents

MiB = 1024 * 1024


def make_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def extract(
    path: Path, dest: Path, *, max_members: int = 10_000, max_total_bytes: int = 2**31, max_ratio: float = 200
) -> list[tuple[str, str]]:
    """(extracted file name, member path) of every extracted member."""
    members = iter_zip_members(
        path, dest, max_members=max_members, max_total_bytes=max_total_bytes, max_ratio=max_ratio
    )
    return [(target.name, member) for target, member in members]


def test_members_are_extracted_with_safe_unique_names(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "a.zip",
        {"docs/": b"", "docs/x.txt": b"one", "more/x.txt": b"two", "we;ird name.md": b"# t", "top.txt": b"3"},
    )
    dest = tmp_path / "out"
    dest.mkdir()
    assert extract(archive, dest) == [
        ("x.txt", "docs/x.txt"),
        ("x-2.txt", "more/x.txt"),
        ("we_ird name.md", "we;ird name.md"),
        ("top.txt", "top.txt"),
    ]
    assert (dest / "x-2.txt").read_bytes() == b"two"
    assert sorted(p.name for p in dest.iterdir()) == ["top.txt", "we_ird name.md", "x-2.txt", "x.txt"]


def test_hidden_files_macos_forks_and_directories_are_skipped(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "a.zip",
        {
            "__MACOSX/._a.txt": b"fork",
            ".DS_Store": b"x",
            "dir/.hidden.txt": b"x",
            ".git/config": b"x",
            "a.txt": b"ok",
        },
    )
    assert list_zip_members(archive) == ["a.txt"]


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.txt", "points outside the archive"),
        ("docs/../../evil.txt", "points outside the archive"),
        ("..\\evil.txt", "points outside the archive"),
        ("/abs.txt", "has an absolute path"),
        ("\\abs.txt", "has an absolute path"),
        ("C:/Windows/evil.txt", "has a drive letter"),
    ],
)
def test_unsafe_paths_refuse_the_whole_archive(tmp_path: Path, member: str, why: str) -> None:
    archive = make_zip(tmp_path / "up.zip", {"fine.txt": b"fine", member: b"evil"})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DocumentError) as info:
        extract(archive, dest)
    assert info.value.detail == f"up.zip: refused: member {member!r} {why}" + (
        " ('..' in its path)" if ".." in member else ""
    )
    assert list(dest.iterdir()) == []  # refused before anything was written
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_member_refuses_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", b"fine")
        link = zipfile.ZipInfo("passwd.txt")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(
        DocumentError, match=r"^links\.zip: refused: member 'passwd\.txt' is a symbolic link$"
    ):
        list(iter_file_documents(archive, name="links.zip"))


def test_encrypted_member_refuses_the_archive(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "secret.zip", {"a.txt": b"ciphertext"})
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x1  # general purpose flag bit 0: encrypted (zipfile cannot write encrypted zips)
    archive.write_bytes(bytes(data))
    with pytest.raises(DocumentError, match="is encrypted"):
        list_zip_members(archive)


def test_zip_bomb_is_refused_up_front_by_its_ratio(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"a.txt": b"ok", "zeros.txt": b"\0" * (4 * MiB)})
    with pytest.raises(DocumentError) as info:
        next(iter_file_documents(archive, name="bomb.zip"))  # before the first document
    assert info.value.detail.startswith("bomb.zip: refused: member 'zeros.txt' expands ")
    assert info.value.detail.endswith("x, above the 200x limit (zip bomb?)")


def test_total_size_limit_is_refused_up_front(tmp_path: Path) -> None:
    members = {f"f{i}.txt": bytes(range(256)) * 1024 for i in range(3)}  # 256 KiB each, barely compressible
    archive = make_zip(tmp_path / "big.zip", members, method=zipfile.ZIP_STORED)
    with pytest.raises(DocumentError) as info:
        extract(archive, tmp_path, max_total_bytes=512 * 1024)
    assert info.value.detail == "big.zip: refused: uncompressed size exceeds 512 KiB limit (zip bomb?)"
    assert extract(archive, tmp_path, max_total_bytes=MiB) == [(f"f{i}.txt", f"f{i}.txt") for i in range(3)]


def test_forged_sizes_are_caught_while_streaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the central directory check is fooled, counting the bytes actually written still stops a bomb."""
    monkeypatch.setattr(ingestion.archive, "check_declared_sizes", lambda *args: None)
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.txt": b"\0" * (8 * MiB)})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DocumentError, match=r"^bomb\.zip: refused: member 'zeros\.txt' expands \d+x"):
        extract(archive, dest)
    with pytest.raises(DocumentError, match=r"^bomb\.zip: refused: uncompressed size exceeds 2 MiB limit"):
        extract(archive, dest, max_total_bytes=2 * MiB, max_ratio=10_000)
    assert list(dest.iterdir()) == []  # partial files are removed


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(6)})
    with pytest.raises(DocumentError, match=r"^many\.zip: refused: 6 members exceed the limit of 5$"):
        extract(archive, tmp_path, max_members=5)
    with pytest.raises(DocumentError, match="6 members exceed the limit of 5"):
        list(iter_file_documents(archive, name="many.zip", archive_limits=ArchiveLimits(max_members=5)))


@pytest.mark.parametrize("data", [b"not a zip", b"PK\x03\x04" + b"\0" * 40, b""])
def test_unreadable_archive_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "stored"
    path.write_bytes(data)
    with pytest.raises(DocumentError, match=r"^broken\.zip: not a readable zip archive \("):
        list(iter_file_documents(path, name="broken.zip"))


def test_corrupt_member_data_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "c.zip", {"a.txt": b"hello world " * 100})
    data = bytearray(archive.read_bytes())
    data[40:60] = b"\xff" * 20  # inside the deflated data of the only member
    archive.write_bytes(bytes(data))
    with pytest.raises(DocumentError, match=r"^c\.zip: not a readable zip archive \(member 'a\.txt': "):
        extract(archive, tmp_path)
    assert not (tmp_path / "a.txt").exists()


def test_archive_documents_with_failing_members(tmp_path: Path) -> None:
    inner = make_zip(tmp_path / "inner.zip", {"x.txt": b"x"}).read_bytes()
    archive = make_zip(
        tmp_path / "stored-upload",
        {
            "readme.md": b"# Read me\nbody",
            "docs/notes.txt": b"notes",
            "photo.jpg": b"\xff\xd8",
            "nested.zip": inner,
            "broken.pdf": b"%PDF-1.4 garbage",
            "data/corpus.jsonl": b'{"_id": "c1", "text": "one"}\n{"text": "no id"}\n',
            "empty.txt": b"",
        },
    )
    result = list(iter_file_documents(archive, name="bundle.zip"))
    documents = [item for item in result if isinstance(item, Document)]
    failures = {item.doc_id: item.reason for item in result if isinstance(item, Failure)}
    assert documents == [
        Document(id="bundle.zip/readme.md", text="# Read me\nbody", title="Read me"),
        Document(id="bundle.zip/docs/notes.txt", text="notes"),
        Document(id="c1", text="one"),
        Document(id="bundle.zip/data/corpus.jsonl#line2", text="no id"),
    ]
    assert set(failures) == {
        "bundle.zip/photo.jpg",
        "bundle.zip/nested.zip",
        "bundle.zip/broken.pdf",
        "bundle.zip/empty.txt",
    }
    assert failures["bundle.zip/photo.jpg"].startswith(
        "bundle.zip/photo.jpg: unsupported file type (suffix '.jpg')"
    )
    assert ".pdf, .txt, .zip" in failures["bundle.zip/photo.jpg"]
    assert failures["bundle.zip/nested.zip"] == (
        "bundle.zip/nested.zip: nested archives are not supported; unpack it and upload its files"
    )
    assert failures["bundle.zip/broken.pdf"].startswith("bundle.zip/broken.pdf: not a readable PDF (")
    assert failures["bundle.zip/empty.txt"] == "bundle.zip/empty.txt: file is empty"


def test_extracted_members_are_deleted_once_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    archive = make_zip(tmp_path / "a.zip", {"a.txt": b"one", "b.txt": b"two", "c.txt": b"three"})
    documents = iter_file_documents(archive, name="a.zip")
    assert next(documents) == Document(id="a.zip/a.txt", text="one")
    assert next(documents) == Document(id="a.zip/b.txt", text="two")
    [extraction_dir] = work.iterdir()
    assert [p.name for p in extraction_dir.iterdir()] == ["b.txt"]  # a.txt is gone, b.txt is being read
    assert [doc.id for doc in documents if isinstance(doc, Document)] == ["a.zip/c.txt"]
    assert list(work.iterdir()) == []
