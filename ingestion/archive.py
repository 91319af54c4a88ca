"""Safe extraction of uploaded zip archives.

An archive is untrusted input: member names may try to escape the extraction directory and sizes
may be forged. The central directory is checked before anything is written, and the bytes actually
produced are counted while streaming, so a zip bomb is refused before it fills the disk. What an
archive (and an upload's archives together) may cost is in `ingestion.archive_limits`.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from common.errors import DocumentError
from ingestion.archive_limits import (
    MAX_ARCHIVE_BYTES,
    MAX_ARCHIVE_MEMBERS,
    MAX_COMPRESSION_RATIO,
    RATIO_CHECK_MIN_BYTES,
    ArchiveLimits,
    ExpansionBudget,
    ExpansionMeter,
    check_declared_sizes,
    check_member_ratio,
    compressed_bytes,
    format_size,
)
from ingestion.formats.common import sanitize_filename

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_MEMBERS",
    "MAX_COMPRESSION_RATIO",
    "RATIO_CHECK_MIN_BYTES",
    "ArchiveLimits",
    "ExpansionBudget",
    "check_declared_sizes",
    "declared_size",
    "format_size",
    "iter_zip_members",
    "list_zip_members",
    "open_zip",
]

CHUNK_BYTES = 64 * 1024

SUPPORTED_COMPRESSION = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_COMPRESSION_NAMES = {9: "Deflate64", 93: "Zstandard", 95: "XZ", 98: "PPMd", 99: "AES"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_READ_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
)
"""What reading a damaged member raises (bad header, bad CRC, truncated or undecodable data)."""

NO_FILES = "the archive holds no files to read (only directories, hidden files or nothing)"
Plan = tuple[list[tuple[zipfile.ZipInfo, str]], ExpansionMeter]
"""The regular files to extract, in order, and the meter their real bytes are counted on."""


def iter_zip_members(
    path: Path,
    dest: Path,
    *,
    name: str | None = None,
    select: Callable[[str], bool] | None = None,
    limits: ArchiveLimits | None = None,
    budget: ExpansionBudget | None = None,
) -> Iterator[tuple[Path, str]]:
    """Extract the archive's regular files into `dest`, yielding (extracted path, member path).

    `name` is the archive's name in messages (default: the file name); `select(member path)` says
    which members to extract (default: all); `budget` is shared by every archive of one upload.
    Raises DocumentError, refusing the whole archive, for an unreadable zip, an unsafe member or a
    zip bomb: before the first member when the central directory shows it, else while streaming,
    and then every file this call extracted is deleted. Extracted names are sanitised and unique.
    """
    archive = name or path.name
    created: list[Path] = []
    with open_zip(path, archive) as zf:
        members, meter = _plan(zf, path, archive, limits or ArchiveLimits(), budget)
        for info, member in members:
            if select is not None and not select(member):
                continue
            target, out = _create_unique(dest, member)
            created.append(target)
            try:
                with out:
                    _copy_member(zf, info, out, archive, meter)
            except BaseException:
                for extracted in created:  # a refused archive leaves nothing behind
                    extracted.unlink(missing_ok=True)
                raise
            yield target, member


def list_zip_members(
    path: Path,
    *,
    name: str | None = None,
    limits: ArchiveLimits | None = None,
    budget: ExpansionBudget | None = None,
) -> list[str]:
    """Member paths `iter_zip_members` would extract, after the same up-front checks (raising alike)."""
    archive = name or path.name
    with open_zip(path, archive) as zf:
        members, _ = _plan(zf, path, archive, limits or ArchiveLimits(), budget)
        return [member for _, member in members]


def declared_size(path: Path, *, name: str | None = None, limits: ArchiveLimits | None = None) -> int:
    """Bytes the archive declares it expands to, after the up-front checks (raising alike): what the
    API adds up over an upload's archives against its budget."""
    archive = name or path.name
    with open_zip(path, archive) as zf:
        members, _ = _plan(zf, path, archive, limits or ArchiveLimits(), None)
        if not members:
            raise DocumentError(f"{archive}: {NO_FILES}")
        return sum(info.file_size for info in zf.infolist())


def open_zip(path: Path, archive: str) -> zipfile.ZipFile:
    """Open a zip, turning every way it can be unreadable into one message for the operator."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DocumentError(f"{archive}: not a readable zip archive ({exc})") from exc


def _plan(
    zf: zipfile.ZipFile, path: Path, archive: str, limits: ArchiveLimits, budget: ExpansionBudget | None
) -> Plan:
    """Check every entry of the central directory, the archive as a whole, then the upload's budget
    (an archive's own faults are reported first: they refuse it whatever else the upload holds)."""
    infos, size = zf.infolist(), path.stat().st_size
    check_declared_sizes(infos, archive, limits, archive_bytes=size)  # skipped entries count too
    members = [(info, member) for info in infos if (member := _member_path(info, archive)) is not None]
    if budget is not None:
        budget.check_declared(archive, sum(info.file_size for info in infos))
    return members, ExpansionMeter(archive, compressed_bytes(infos, size), limits, budget)


def _member_path(info: zipfile.ZipInfo, archive: str) -> str | None:
    """The member's normalised path, None for entries that are skipped, DocumentError if unsafe."""
    raw = info.filename
    where = f"{archive}: refused: member {raw!r}"
    if raw.startswith(("/", "\\")):
        raise DocumentError(f"{where} has an absolute path")
    if _DRIVE.match(raw):
        raise DocumentError(f"{where} has a drive letter")
    parts = [part for part in raw.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DocumentError(f"{where} points outside the archive ('..' in its path)")
    _check_entry_type(info, where)
    if info.is_dir() or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None  # directories, macOS resource forks and hidden files are not documents
    return "/".join(parts)


def _check_entry_type(info: zipfile.ZipInfo, where: str) -> None:
    """Refuse links, special files, encryption and compression methods this Python cannot read."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DocumentError(f"{where} is a symbolic link")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DocumentError(f"{where} is not a regular file")
    if info.flag_bits & 0x1:
        raise DocumentError(f"{where} is encrypted (password-protected archives are not supported)")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        method = _COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
        raise DocumentError(
            f"{where} uses an unsupported compression method ({method}); re-create it with standard Deflate"
        )


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes], archive: str, meter: ExpansionMeter
) -> None:
    """Stream one member to `out`, counting real bytes before writing them: declared sizes may be forged."""
    written = 0
    with _open_member(zf, info, archive) as src:
        while chunk := _read_chunk(src, info, archive):
            written += len(chunk)
            check_member_ratio(written, info, archive, meter.limits)
            meter.add(len(chunk))
            out.write(chunk)  # a failed write (disk full) is the server's problem: not caught here


def _open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str) -> IO[bytes]:
    try:
        return zf.open(info)
    except _READ_ERRORS as exc:
        raise _unreadable(archive, info, exc) from exc


def _read_chunk(src: IO[bytes], info: zipfile.ZipInfo, archive: str) -> bytes:
    try:
        return src.read(CHUNK_BYTES)
    except _READ_ERRORS as exc:
        raise _unreadable(archive, info, exc) from exc


def _unreadable(archive: str, info: zipfile.ZipInfo, exc: Exception) -> DocumentError:
    return DocumentError(f"{archive}: not a readable zip archive (member {info.filename!r}: {exc})")


def _create_unique(dest: Path, member: str) -> tuple[Path, IO[bytes]]:
    """Create a new file for `member` in `dest`: sanitised base name, "-2", "-3"... on collisions.

    Exclusive creation never follows or overwrites anything already in `dest`.
    """
    base = Path(sanitize_filename(member))
    for attempt in range(1, 1_000_000):
        candidate = dest / (base.name if attempt == 1 else f"{base.stem}-{attempt}{base.suffix}")
        try:
            return candidate, candidate.open("xb")
        except FileExistsError:
            continue
    raise DocumentError(f"{member}: no free file name to extract it to")  # pragma: no cover
