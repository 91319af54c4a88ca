"""What zip archives may cost: per member, per archive, and per upload (all its archives together).

A zip bomb need not hide in one member: hundreds of members each below the member check's floor expand
just as far. So the ratio and the expanded bytes are checked for the whole archive as well, first from
the central directory (before anything is written), then against the bytes really produced (declared
sizes may be forged). An upload may also carry many archives that each pass: `ExpansionBudget` bounds
what all of them together expand to. Torch-free: the API imports it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import DocumentError

if TYPE_CHECKING:
    from common.settings import Settings

MAX_ARCHIVE_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 2 * 1024**3
"""Total uncompressed bytes one archive may extract to (lowered to the upload budget when that is smaller)."""
MAX_COMPRESSION_RATIO = 200.0
"""Expanded/compressed size above which an archive or member is taken for a zip bomb (text rarely tops 20)."""
RATIO_CHECK_MIN_BYTES = 1024 * 1024
"""Below this many expanded bytes a member or archive is never refused for its ratio: small runs of spaces
compress ~1000x, and so little output cannot hurt."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may cost; exceeding any limit refuses the whole archive."""

    max_members: int = MAX_ARCHIVE_MEMBERS
    max_total_bytes: int = MAX_ARCHIVE_BYTES
    max_ratio: float = MAX_COMPRESSION_RATIO
    ratio_floor_bytes: int = RATIO_CHECK_MIN_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        """The operator's limits, for the API's precheck and the worker alike (so both refuse the same).

        One archive never gets more than the whole upload's budget: such an archive could never be
        extracted, and refusing it by its own size makes it fail alone instead of refusing the request.
        """
        return cls(
            max_members=settings.zip_max_members,
            max_total_bytes=min(MAX_ARCHIVE_BYTES, settings.upload_max_expanded_bytes),
            max_ratio=settings.zip_max_ratio,
        )


@dataclass
class ExpansionBudget:
    """Expanded bytes all zip archives of one upload may still produce: one per job, shared by its files.

    Mutable on purpose: each archive checks its declared size against what is left before it is opened
    for extraction, and spends the bytes it really produces while streaming.
    """

    limit: int
    spent: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ExpansionBudget:
        return cls(limit=settings.upload_max_expanded_bytes)

    def check_declared(self, archive: str, declared: int) -> None:
        """Refuse an archive up front when its declared size no longer fits in what is left."""
        if self.spent + declared > self.limit:
            raise DocumentError(self._refusal(archive, self.spent + declared))

    def spend(self, archive: str, produced: int) -> None:
        """Count bytes really produced; refuse as soon as the upload's total passes the limit."""
        self.spent += produced
        if self.spent > self.limit:
            raise DocumentError(self._refusal(archive, self.spent))

    def _refusal(self, archive: str, total: int) -> str:
        return (
            f"{archive}: refused: with it, the zip archives of this upload expand to {format_size(total)}, "
            f"above the {format_size(self.limit)} limit per upload; send it in a separate upload"
        )


def compressed_bytes(infos: list[zipfile.ZipInfo], archive_bytes: int | None = None) -> int:
    """The archive's compressed bytes, the ratio's denominator: the members' compressed sizes, at most
    the file's own size (a forged `compress_size` cannot make a bomb look less compressed)."""
    total = sum(info.compress_size for info in infos)
    if archive_bytes is not None:
        total = min(total, archive_bytes)
    return max(total, 1)


def check_declared_sizes(
    infos: list[zipfile.ZipInfo], archive: str, limits: ArchiveLimits, *, archive_bytes: int | None = None
) -> None:
    """Refuse from the central directory alone: too many members, too large, or too compressed, as a
    member or as a whole archive (`archive_bytes`: the file's size, when known).

    Python's zipfile never returns more than a member's declared size, so this also bounds what a
    library reading the zip (e.g. python-docx) will decompress.
    """
    if len(infos) > limits.max_members:
        raise DocumentError(
            f"{archive}: refused: {len(infos)} members exceed the limit of {limits.max_members}"
        )
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_total_bytes:
        raise DocumentError(too_large(archive, limits))
    for info in infos:
        check_member_ratio(info.file_size, info, archive, limits)
    check_archive_ratio(declared, compressed_bytes(infos, archive_bytes), archive, limits)


def check_member_ratio(produced: int, info: zipfile.ZipInfo, archive: str, limits: ArchiveLimits) -> None:
    """Refuse a member that expands (or has so far expanded) more than `max_ratio` times."""
    compressed = max(info.compress_size, 1)
    if produced >= limits.ratio_floor_bytes and produced > limits.max_ratio * compressed:
        raise DocumentError(
            f"{archive}: refused: member {info.filename!r} expands {produced / compressed:.0f}x, "
            f"above the {limits.max_ratio:g}x limit (zip bomb?)"
        )


def check_archive_ratio(
    produced: int, compressed: int, archive: str, limits: ArchiveLimits, *, so_far: bool = False
) -> None:
    """Refuse an archive whose members together expand (`so_far`: have expanded) past `max_ratio`."""
    if produced >= limits.ratio_floor_bytes and produced > limits.max_ratio * compressed:
        sizes = f"{format_size(produced)} from {format_size(compressed)}"
        expands = (
            f"has expanded more than {limits.max_ratio:g}x ({sizes} so far)"
            if so_far
            else f"expands {produced / compressed:.0f}x ({sizes}), above the {limits.max_ratio:g}x limit"
        )
        raise DocumentError(f"{archive}: refused: the archive {expands} (zip bomb?)")


@dataclass
class ExpansionMeter:
    """Real bytes one archive has produced while streaming, checked against the same limits as its
    declared sizes and spent from the upload's budget: a forged central directory gains nothing."""

    archive: str
    compressed: int
    limits: ArchiveLimits
    budget: ExpansionBudget | None = None
    produced: int = 0

    def add(self, size: int) -> None:
        """Count `size` more bytes, before they are written; raises DocumentError past any limit."""
        self.produced += size
        if self.produced > self.limits.max_total_bytes:
            raise DocumentError(too_large(self.archive, self.limits))
        check_archive_ratio(self.produced, self.compressed, self.archive, self.limits, so_far=True)
        if self.budget is not None:
            self.budget.spend(self.archive, size)


def too_large(archive: str, limits: ArchiveLimits) -> str:
    limit = format_size(limits.max_total_bytes)
    return f"{archive}: refused: uncompressed size exceeds {limit} limit (zip bomb?)"


def format_size(size: float) -> str:
    """Bytes as a person reads them: "2 GiB", "1.02 GiB", "800 bytes" (two decimals, so a total just
    over a limit does not read as the limit itself)."""
    for unit, label in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size >= unit:
            return f"{size / unit:.2f}".rstrip("0").rstrip(".") + f" {label}"
    return f"{size:g} bytes"
