"""Where uploads and batch files live: a local directory (`UPLOAD_STORE=local`, the embedded default) or
an S3-compatible object store (`UPLOAD_STORE=s3`: AWS S3, MinIO, GCS's S3 API), chosen by settings.

Keys are the paths the job requests already hold, `<job id>/<file>` and `<job id>/batches/<n>.jsonl`, so
one job's files are one prefix, deleted together. The API writes an upload to a local staging directory
first (the parsers' cheap checks read it there), then `publish`es it: for the local store the staging
directory is the upload directory itself, for S3 each file is streamed up in parts (boto3's managed
transfer) and the staging copy removed. Workers read a stored file through `local` (S3: streamed down to
a temporary file, removed after) and batch files whole (`read_text`; each is one batch of documents).

Every failure to reach the store is ServiceUnavailable: a 503 at submit (the job is never queued), a
retry in a task (common.retries), never a lost job. Nothing connects until first used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

from common.errors import ServiceUnavailable
from common.settings import Settings
from common.types import UploadStore

DELETE_BATCH = 1000  # S3's DeleteObjects takes at most this many keys


class LocalUploads:
    """A directory shared by the API and the workers (one host, or an NFS mount on every host)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def staging(self, job_id: str) -> Path:
        path = self.root / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, job_id: str) -> None:
        """The staging directory is the upload directory: nothing to move."""

    def write_text(self, key: str, text: str) -> None:
        """Written to a temporary name then renamed, so a reader never sees half a file."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)

    def read_text(self, key: str) -> str:
        return (self.root / key).read_text(encoding="utf-8")

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        yield self.root / key

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def remove(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)

    def touch(self, prefix: str) -> None:
        """Fresh again: an unscheduled prefix is swept only once old (`stale`)."""
        with suppress(OSError):
            os.utime(self.root / prefix)

    def stale(self, older_than: float) -> list[str]:
        """Top-level prefixes (job directories) unchanged since `older_than` (Unix time)."""
        if not self.root.is_dir():
            return []
        with os.scandir(self.root) as entries:
            return [
                entry.name
                for entry in entries
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < older_than
            ]


class S3Uploads:
    """A bucket of an S3-compatible store, through boto3 (its managed transfers stream in parts)."""

    def __init__(self, settings: Settings, staging_root: Path) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.staging_root = staging_root
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # noqa: PLC0415 - only where the S3 store is used
            from botocore.config import Config  # noqa: PLC0415

            s = self.settings
            self._client = boto3.client(
                "s3",
                endpoint_url=s.s3_endpoint_url,
                region_name=s.s3_region,
                aws_access_key_id=s.s3_access_key_id.get_secret_value() if s.s3_access_key_id else None,
                aws_secret_access_key=(
                    s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
                ),
                config=Config(
                    connect_timeout=s.s3_timeout_s,
                    read_timeout=s.s3_timeout_s,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"},
                ),
            )
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def staging(self, job_id: str) -> Path:
        path = self.staging_root / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, job_id: str) -> None:
        """Stream every staged file of the job up, then drop the staging copy (also when that failed)."""
        folder = self.staging_root / job_id
        try:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                key = self._key(path.relative_to(self.staging_root).as_posix())
                self._writing(partial(self.client.upload_file, str(path), self.bucket, key))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def write_text(self, key: str, text: str) -> None:
        body = text.encode("utf-8")
        self._writing(lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body))

    def _writing(self, write: Callable[[], object]) -> None:
        """A write; a missing bucket is created once (a fresh MinIO or stand-in starts empty)."""
        from boto3.exceptions import S3UploadFailedError  # noqa: PLC0415
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with s3_errors("write"):
            try:
                write()
            except (ClientError, S3UploadFailedError) as exc:
                if "NoSuchBucket" not in str(exc):
                    raise
                self.ensure_bucket()
                write()

    def read_text(self, key: str) -> str:
        with s3_errors("read"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return str(body.read().decode("utf-8"))

    @contextmanager
    def local(self, key: str) -> Iterator[Path]:
        """The object streamed down to a temporary file of its own name, removed afterwards."""
        self.staging_root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="download-", dir=self.staging_root))
        path = folder / Path(key).name
        try:
            with s3_errors("download"):
                self.client.download_file(self.bucket, self._key(key), str(path))
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            with s3_errors("look up"):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def remove(self, prefix: str) -> None:
        with s3_errors("delete"):
            keys = [item["Key"] for item in self._objects(prefix)]
            for start in range(0, len(keys), DELETE_BATCH):
                batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def touch(self, prefix: str) -> None:
        """Fresh again (objects cannot be touched): a marker object makes the prefix's newest time now."""
        with s3_errors("mark"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(f"{prefix}/.kept"), Body=b"")

    def stale(self, older_than: float) -> list[str]:
        """Top-level prefixes (job directories) whose newest object is older than `older_than`."""
        newest: dict[str, float] = {}
        with s3_errors("list"):
            for item in self._objects(""):
                top = item["Key"].removeprefix(self.prefix).split("/", 1)[0]
                newest[top] = max(newest.get(top, 0.0), item["LastModified"].timestamp())
        return [name for name, at in newest.items() if at < older_than]

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2")
        wanted = self._key(f"{prefix}/" if prefix else "")
        for page in pages.paginate(Bucket=self.bucket, Prefix=wanted):
            yield from page.get("Contents", [])

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (the compose stack's and tests' stores start empty)."""
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with s3_errors("create the bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError:
                self.client.create_bucket(Bucket=self.bucket)


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """The store unreachable (or failing on its side) is ServiceUnavailable; a 4xx stays what it is."""
    from boto3.exceptions import Boto3Error  # noqa: PLC0415
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        yield
    except Boto3Error as exc:  # a managed transfer that failed (its cause is in the text)
        raise ServiceUnavailable(f"the upload store failed to {what}: {exc}") from exc
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status >= 500 or status == 0:
            raise ServiceUnavailable(f"the upload store failed to {what}: {exc}") from exc
        raise
    except (BotoCoreError, OSError) as exc:
        raise ServiceUnavailable(f"the upload store is unreachable ({what}): {exc}") from exc


def upload_store(settings: Settings) -> UploadStore:
    """The store the settings choose."""
    if settings.upload_store == "s3":
        return S3Uploads(settings, settings.data_dir / "staging")
    return LocalUploads(settings.uploads)
