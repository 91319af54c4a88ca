"""A multipart/form-data body streamed from disk, for uploads that should not sit in memory."""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

CHUNK_BYTES = 256 * 1024
_PARAM_ESCAPES = str.maketrans({'"': "%22", "\r": "%0D", "\n": "%0A"})
"""Header parameter escaping as browsers do it for form uploads; UTF-8 names are kept as they are."""


class MultipartBody:
    """A multipart/form-data body streamed from disk with a known Content-Length.

    requests' own `files=` assembles the whole body in memory; a 50 MB upload batch should not. Files are
    opened one at a time while sending, so a 200-file batch does not hold 200 descriptors either.
    """

    def __init__(self, form: Mapping[str, str], paths: Sequence[Path]) -> None:
        self.boundary = uuid.uuid4().hex
        self._parts: list[bytes | tuple[Path, int]] = []
        for name, value in form.items():
            self._parts.append(self._head(name) + value.encode() + b"\r\n")
        for path in paths:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._parts += [self._head("files", path.name, ctype), (path, path.stat().st_size), b"\r\n"]
        self._parts.append(f"--{self.boundary}--\r\n".encode())

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self, name: str, filename: str | None = None, ctype: str | None = None) -> bytes:
        disposition = f'form-data; name="{name.translate(_PARAM_ESCAPES)}"'
        if filename is not None:
            disposition += f'; filename="{filename.translate(_PARAM_ESCAPES)}"'
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if ctype:
            lines.append(f"Content-Type: {ctype}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def __len__(self) -> int:
        return sum(part[1] if isinstance(part, tuple) else len(part) for part in self._parts)

    def __iter__(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, bytes):
                yield part
            else:
                yield from _read_exactly(*part)


def _read_exactly(path: Path, size: int) -> Iterator[bytes]:
    """The first `size` bytes of `path` in chunks; the Content-Length was promised before sending."""
    remaining = size
    with path.open("rb") as handle:
        while remaining > 0:
            chunk = handle.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                raise OSError(f"{path} shrank while it was being uploaded")
            remaining -= len(chunk)
            yield chunk
