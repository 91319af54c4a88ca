"""Zip uploads: members are documents, unsafe archives are refused whole, zip bombs never expand.

Every archive is built here with zipfile; bombs use zeros or spaces, which deflate ~1000x, so they stay
small. Limits hold per member, per archive (issue 13: many members each below the member floor) and per
upload (one ExpansionBudget shared by all the archives of a job).
"""

from __future__ import annotations

import random
import re
import stat
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

import ingestion.archive
from common.errors import DocumentError
from common.settings import Settings
from common.types import Document
from ingestion.archive import ArchiveLimits, ExpansionBudget, iter_zip_members, list_zip_members
from ingestion.parsing import Failure, item_id, iter_file_documents, precheck

MiB = 1024 * 1024


def make_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def extract(
    path: Path, dest: Path, *, budget: ExpansionBudget | None = None, **limits: Any
) -> list[tuple[str, str]]:
    """(extracted file name, member path) of every extracted member; `limits`: ArchiveLimits fields."""
    members = iter_zip_members(path, dest, limits=ArchiveLimits(**limits), budget=budget)
    return [(target.name, member) for target, member in members]


def ratio(path: Path) -> float:
    """The archive's expanded/compressed bytes, as its central directory declares them."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    return sum(i.file_size for i in infos) / sum(i.compress_size for i in infos)


def spaces_bomb(path: Path, members: int = 100) -> Path:
    """Issue 13: many members just under the 1 MiB member floor, ~1000x each: no member check fires."""
    return make_zip(path, {f"part{i:03d}.txt": b" " * (MiB - 1) for i in range(members)})


def log_text(lines: int, seed: int = 0) -> bytes:
    """Text that deflates like real logs or CSV (~5-20x): repeated structure, varying values."""
    rng = random.Random(seed)
    services = ["search", "ingest", "billing", "auth", "gateway"]
    return "".join(
        f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} INFO "
        f"service={rng.choice(services)} request={rng.getrandbits(32):08x} status=200 "
        f"latency_ms={rng.randint(1, 999)}\n"
        for _ in range(lines)
    ).encode()


def forge_declared_size(path: Path, member: str, size: int) -> None:
    """Rewrite one member's uncompressed size in the central directory (the local header keeps the truth)."""
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # central directory entries: name at +46, size at +24
    while data[entry + 46 : entry + 46 + len(member)] != member.encode():
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 24 : entry + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


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
    monkeypatch.setattr(ingestion.archive, "check_declared_sizes", lambda *args, **kwargs: None)
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


# --- issue 13: limits per archive and per upload, not only per member ---


def test_many_members_under_the_member_floor_are_refused_up_front_by_the_archive_ratio(
    tmp_path: Path,
) -> None:
    archive = spaces_bomb(tmp_path / "bomb.zip")
    assert ratio(archive) > 600
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DocumentError) as info:
        next(iter_file_documents(archive, name="bomb.zip"))  # before the first document
    assert re.fullmatch(
        r"bomb\.zip: refused: the archive expands (\d+)x \(100 MiB from [\d.]+ KiB\), above the 200x limit "
        r"\(zip bomb\?\)",
        info.value.detail,
    ), info.value.detail
    with pytest.raises(DocumentError, match=r"^bomb\.zip: refused: the archive expands \d+x"):
        extract(archive, dest)
    assert list(dest.iterdir()) == []  # refused before anything was written
    with pytest.raises(DocumentError, match=r"^bomb\.zip: refused: the archive expands \d+x"):
        precheck(archive, "bomb.zip")  # the API's cheap check says the same


def test_archive_bomb_with_forged_sizes_is_refused_while_streaming_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the central directory fools the up-front check, the archive's real bytes still stop it.

    The members already extracted before the limit is crossed are deleted too.
    """
    monkeypatch.setattr(ingestion.archive, "check_declared_sizes", lambda *args, **kwargs: None)
    archive = spaces_bomb(tmp_path / "bomb.zip")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(
        DocumentError,
        match=r"^bomb\.zip: refused: the archive has expanded more than 200x "
        r"\(19\.\d+ MiB from [\d.]+ KiB so far\) \(zip bomb\?\)$",
    ):
        extract(archive, dest)
    assert list(dest.iterdir()) == []
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    documents = iter_file_documents(archive, name="bomb.zip")
    assert item_id(next(documents)) == "bomb.zip/part000.txt"  # it did start extracting (all spaces)...
    with pytest.raises(DocumentError, match="the archive has expanded more than 200x"):
        list(documents)
    assert list(work.iterdir()) == []  # ...and nothing of it is left


def test_forged_central_directory_sizes_refuse_the_archive_while_streaming(tmp_path: Path) -> None:
    """A member declared tiny (so every up-front check passes) is cut at its declared size and refused."""
    archive = make_zip(
        tmp_path / "forged.zip",
        {"a.txt": b"first", "b.txt": b"second", "zeros.txt": b"\0" * (4 * MiB)},
    )
    forge_declared_size(archive, "zeros.txt", 1000)
    assert list_zip_members(archive) == ["a.txt", "b.txt", "zeros.txt"]  # passes up front
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(
        DocumentError, match=r"^forged\.zip: not a readable zip archive \(member 'zeros\.txt'"
    ):
        extract(archive, dest)
    assert list(dest.iterdir()) == []  # a.txt and b.txt were extracted, then deleted with the refusal


def test_the_upload_budget_is_shared_by_its_archives(tmp_path: Path) -> None:
    text = log_text(8000)  # ~600 KiB
    a = make_zip(tmp_path / "a.zip", {"a.txt": text})
    b = make_zip(tmp_path / "b.zip", {"b.txt": text})
    small = make_zip(tmp_path / "small.zip", {"s.txt": b"small"})
    budget = ExpansionBudget(limit=MiB)
    assert [item.id for item in iter_file_documents(b, name="b.zip") if isinstance(item, Document)] == [
        "b.zip/b.txt"
    ]  # alone (no budget) b.zip passes
    assert len(list(iter_file_documents(a, name="a.zip", budget=budget))) == 1
    assert budget.spent == len(text)
    with pytest.raises(DocumentError) as info:
        next(iter_file_documents(b, name="b.zip", budget=budget))  # refused up front, by its declared size
    assert info.value.detail == (
        f"b.zip: refused: with it, the zip archives of this upload expand to "
        f"{ingestion.archive.format_size(2 * len(text))}, above the 1 MiB limit per upload; "
        "send it in a separate upload"
    )
    assert budget.spent == len(text)  # a refused archive spends nothing
    assert len(list(iter_file_documents(small, name="small.zip", budget=budget))) == 1  # what fits still goes
    assert budget.spent == len(text) + len(b"small")


def test_the_upload_budget_is_enforced_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ExpansionBudget, "check_declared", lambda *args: None)  # fooled up front
    archive = make_zip(tmp_path / "a.zip", {f"{i}.txt": log_text(2000, seed=i) for i in range(4)})
    dest = tmp_path / "out"
    dest.mkdir()
    budget = ExpansionBudget(limit=300 * 1024, spent=100 * 1024)  # another archive spent 100 KiB
    with pytest.raises(
        DocumentError, match=r"^a\.zip: refused: with it, .* above the 300 KiB limit per upload"
    ):
        extract(archive, dest, budget=budget)
    assert list(dest.iterdir()) == []
    assert budget.spent <= 300 * 1024 + ingestion.archive.CHUNK_BYTES  # stopped at the first chunk past it


def test_a_normal_text_archive_passes(tmp_path: Path) -> None:
    members = {f"logs/day{i}.log.txt": log_text(10_000, seed=i) for i in range(6)}  # ~4.5 MiB
    archive = make_zip(tmp_path / "logs.zip", members)
    assert 5 <= ratio(archive) <= 20  # realistic, and past the archive floor: the archive check ran
    budget = ExpansionBudget(limit=64 * MiB)
    documents = list(iter_file_documents(archive, name="logs.zip", budget=budget))
    assert [doc.id for doc in documents if isinstance(doc, Document)] == [f"logs.zip/{m}" for m in members]
    assert budget.spent == sum(len(data) for data in members.values())
    assert precheck(archive, "logs.zip") == budget.spent  # what the API adds up for the request budget


def test_a_small_archive_of_spaces_passes(tmp_path: Path) -> None:
    """Below the floor (1 MiB expanded in all) a high ratio is harmless: it is never refused for it."""
    members = {f"{i}.txt": b"word" + b" " * (100 * 1024) for i in range(8)}  # 800 KiB, ~1000x
    archive = make_zip(tmp_path / "spaces.zip", members)
    assert ratio(archive) > 500
    documents = list(iter_file_documents(archive, name="spaces.zip"))
    assert [doc.id for doc in documents if isinstance(doc, Document)] == [f"spaces.zip/{m}" for m in members]


def test_limits_come_from_settings() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, zip_max_members=7, zip_max_ratio=50.0, upload_max_expanded_bytes=512 * MiB
    )
    assert ArchiveLimits.from_settings(settings) == ArchiveLimits(
        max_members=7, max_total_bytes=512 * MiB, max_ratio=50.0
    )
    assert ExpansionBudget.from_settings(settings) == ExpansionBudget(limit=512 * MiB)
    defaults = ArchiveLimits.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (defaults.max_members, defaults.max_total_bytes, defaults.max_ratio) == (10_000, 1024 * MiB, 200.0)
    generous = Settings(_env_file=None, upload_max_expanded_bytes=10 * 1024 * MiB)  # type: ignore[call-arg]
    assert (
        ArchiveLimits.from_settings(generous).max_total_bytes == 2 * 1024 * MiB
    )  # one archive: 2 GiB at most
