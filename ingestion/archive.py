"""Safe extraction of uploaded zip archives.

An archive is untrusted input: member names may try to escape the extraction directory and sizes
may be forged. The central directory is checked before anything is written, and the bytes actually
produced are counted while streaming, so a zip bomb is refused before it fills the disk.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.errors import DocumentError
from ingestion.formats.common import sanitize_filename

MAX_ARCHIVE_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 2 * 1024**3
"""Total uncompressed bytes one archive may extract to."""
MAX_COMPRESSION_RATIO = 200.0
"""Uncompressed/compressed size above which a member is taken for a zip bomb (text rarely tops 20)."""
RATIO_CHECK_MIN_BYTES = 1024 * 1024
"""Members smaller than this are never refused for their ratio: small runs of spaces compress ~1000x."""
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


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may cost; exceeding any limit refuses the whole archive."""

    max_members: int = MAX_ARCHIVE_MEMBERS
    max_total_bytes: int = MAX_ARCHIVE_BYTES
    max_ratio: float = MAX_COMPRESSION_RATIO


def iter_zip_members(
    path: Path,
    dest: Path,
    *,
    name: str | None = None,
    select: Callable[[str], bool] | None = None,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> Iterator[tuple[Path, str]]:
    """Extract the archive's regular files into `dest`, yielding (extracted path, member path).

    `name` is the archive's name in messages (default: the file name); `select(member path)` says
    which members to extract (default: all). Raises DocumentError, refusing the whole archive, for
    an unreadable zip, an unsafe member or a zip bomb: before the first member when the central
    directory shows it, else while streaming. Extracted names are sanitised and unique in `dest`.
    """
    archive, limits = name or path.name, ArchiveLimits(max_members, max_total_bytes, max_ratio)
    with open_zip(path, archive) as zf:
        spent = 0
        for info, member in _plan(zf, archive, limits):
            if select is not None and not select(member):
                continue
            target, out = _create_unique(dest, member)
            try:
                with out:
                    spent += _copy_member(zf, info, out, archive, spent=spent, limits=limits)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
            yield target, member


def list_zip_members(
    path: Path, *, name: str | None = None, limits: ArchiveLimits | None = None
) -> list[str]:
    """Member paths `iter_zip_members` would extract, after the same up-front checks (raising alike)."""
    archive = name or path.name
    with open_zip(path, archive) as zf:
        return [member for _, member in _plan(zf, archive, limits or ArchiveLimits())]


def open_zip(path: Path, archive: str) -> zipfile.ZipFile:
    """Open a zip, turning every way it can be unreadable into one message for the operator."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DocumentError(f"{archive}: not a readable zip archive ({exc})") from exc


def check_declared_sizes(infos: list[zipfile.ZipInfo], archive: str, limits: ArchiveLimits) -> None:
    """Refuse from the central directory alone: too many members, too large, or too compressed.

    Python's zipfile never returns more than a member's declared size, so this also bounds what a
    library reading the zip (e.g. python-docx) will decompress.
    """
    if len(infos) > limits.max_members:
        raise DocumentError(
            f"{archive}: refused: {len(infos)} members exceed the limit of {limits.max_members}"
        )
    if sum(info.file_size for info in infos) > limits.max_total_bytes:
        raise DocumentError(_too_large(archive, limits))
    for info in infos:
        _check_ratio(info.file_size, info, archive, limits)


def format_size(size: float) -> str:
    """Bytes as a person reads them: "2 GiB", "1.5 MiB", "800 bytes"."""
    for unit, label in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size >= unit:
            return f"{size / unit:.1f}".removesuffix(".0") + f" {label}"
    return f"{size:g} bytes"


def _too_large(archive: str, limits: ArchiveLimits) -> str:
    limit = format_size(limits.max_total_bytes)
    return f"{archive}: refused: uncompressed size exceeds {limit} limit (zip bomb?)"


def _plan(zf: zipfile.ZipFile, archive: str, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every entry of the central directory; return the regular files to extract, in order."""
    infos = zf.infolist()
    check_declared_sizes(infos, archive, limits)  # directories and skipped entries count as members too
    return [(info, member) for info in infos if (member := _member_path(info, archive)) is not None]


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


def _check_ratio(produced: int, info: zipfile.ZipInfo, archive: str, limits: ArchiveLimits) -> None:
    """Refuse a member that expands (or has so far expanded) more than `max_ratio` times."""
    compressed = max(info.compress_size, 1)
    if produced >= RATIO_CHECK_MIN_BYTES and produced > limits.max_ratio * compressed:
        raise DocumentError(
            f"{archive}: refused: member {info.filename!r} expands {produced / compressed:.0f}x, "
            f"above the {limits.max_ratio:g}x limit (zip bomb?)"
        )


def _copy_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    out: IO[bytes],
    archive: str,
    *,
    spent: int,
    limits: ArchiveLimits,
) -> int:
    """Stream one member to `out`, counting real bytes: declared sizes in the archive may be forged."""
    written = 0
    with _open_member(zf, info, archive) as src:
        while chunk := _read_chunk(src, info, archive):
            written += len(chunk)
            if spent + written > limits.max_total_bytes:
                raise DocumentError(_too_large(archive, limits))
            _check_ratio(written, info, archive, limits)
            out.write(chunk)  # a failed write (disk full) is the server's problem: not caught here
    return written


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
