"""Store submitted documents in the upload store (`store.uploads`: a shared directory or an object store);
workers read them from there. Each upload is written to a local staging directory first (the parsers'
cheap checks read it there), then published whole; a refused or failed upload leaves nothing behind."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from flask import request
from werkzeug.datastructures import FileStorage

from api.schemas import DocumentIn
from common.errors import DocumentError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from common.settings import Settings
from common.types import Document, UploadStore
from ingestion.archive_limits import ArchiveLimits, format_size
from ingestion.parsing import SUPPORTED_SUFFIXES, precheck, sanitize_filename, write_documents_jsonl
from ingestion.validation import document_problem

Source = dict[str, Any]


def content_id(text: str) -> str:
    """A stable id for documents sent without one, so re-sending the same text updates, not duplicates."""
    return "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def save_json_documents(
    job_id: str, docs: list[DocumentIn], settings: Settings, uploads: UploadStore
) -> tuple[Source, int]:
    if len(docs) > settings.max_documents_per_request:
        raise PayloadTooLarge(f"at most {settings.max_documents_per_request} documents per request")
    parsed = [
        Document(id=doc.id or content_id(doc.text), text=doc.text, title=doc.title, metadata=doc.metadata)
        for doc in docs
    ]
    _reject_unstorable(parsed, settings.max_metadata_bytes)
    _reject_duplicate_ids([doc.id for doc in parsed])
    staged = uploads.staging(job_id)
    try:
        write_documents_jsonl(staged / "documents.jsonl", parsed)
        uploads.publish(job_id)
    except Exception:
        shutil.rmtree(staged, ignore_errors=True)  # a failed upload leaves nothing behind
        raise
    return {"kind": "jsonl", "path": f"{job_id}/documents.jsonl"}, len(parsed)


def _reject_unstorable(docs: list[Document], max_metadata_bytes: int) -> None:
    """422 naming every document the store would refuse (the workers check uploads the same way)."""
    errors: list[dict[str, object]] = [
        {"loc": f"documents.{index}", "msg": problem}
        for index, doc in enumerate(docs)
        if (problem := document_problem(doc, max_metadata_bytes))
    ]
    if errors:
        shown = "; ".join(f"{error['loc']}: {error['msg']}" for error in errors[:5])
        raise InvalidRequest(shown, errors=errors[:100])


def _reject_duplicate_ids(ids: list[str]) -> None:
    duplicates = sorted(doc_id for doc_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise InvalidRequest(f"duplicate document ids in one request: {', '.join(duplicates[:10])}")


def _uploaded_files() -> list[FileStorage]:
    files = [item for key in request.files for item in request.files.getlist(key)]
    if not files:
        raise InvalidRequest("multipart upload has no files: send one or more file parts")
    return files


def _check_types(names: list[str]) -> None:
    """Refuse an upload only when no file can be read; a single odd file fails alone in the job."""
    if all(Path(name).suffix.lower() not in SUPPORTED_SUFFIXES for name in names):
        supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
        shown = ", ".join(names[:5])
        raise UnsupportedMediaType(f"no supported file in the upload ({shown}); supported: {supported}")


def save_uploaded_files(
    job_id: str, settings: Settings, options: dict[str, str | None], uploads: UploadStore
) -> tuple[Source, int]:
    files = _uploaded_files()
    if len(files) > settings.max_documents_per_request:
        raise PayloadTooLarge(f"at most {settings.max_documents_per_request} files per request")
    names = [sanitize_filename(item.filename or "file") for item in files]
    _check_types(names)
    _reject_duplicate_ids(names)
    job_dir = uploads.staging(job_id)
    try:
        pairs = enumerate(zip(files, names, strict=True))
        saved = [_save(job_id, job_dir, index, item, name) for index, (item, name) in pairs]
        _refuse_if_nothing_readable(job_dir, saved, settings)
        uploads.publish(job_id)
    except Exception:
        shutil.rmtree(job_dir, ignore_errors=True)  # a refused upload leaves nothing behind
        raise
    return {"kind": "files", "files": saved, "options": options}, len(saved)


def _save(job_id: str, job_dir: Path, index: int, item: FileStorage, name: str) -> dict[str, str]:
    stored = f"{index:05d}-{name}"
    item.save(job_dir / stored)
    if (job_dir / stored).stat().st_size == 0:
        raise InvalidRequest(f"{name}: the file is empty")
    return {"path": f"{job_id}/{stored}", "name": name}


def _refuse_if_nothing_readable(job_dir: Path, saved: list[dict[str, str]], settings: Settings) -> None:
    """422 when every file fails the parsers' cheap checks, or when the zip archives that pass them
    would together expand past the upload's budget; otherwise bad files fail alone in the job."""
    limits = ArchiveLimits.from_settings(settings)
    reasons: list[str] = []
    expanded: dict[str, int] = {}
    for item in saved:
        try:
            expanded[item["name"]] = precheck(job_dir / Path(item["path"]).name, item["name"], limits=limits)
        except DocumentError as exc:
            reasons.append(exc.detail)
    if reasons and len(reasons) == len(saved):
        raise InvalidRequest(
            "; ".join(reasons[:5]), errors=[{"loc": "files", "msg": r} for r in reasons[:50]]
        )
    _refuse_over_budget({name: size for name, size in expanded.items() if size}, settings)


def _refuse_over_budget(expanded: dict[str, int], settings: Settings) -> None:
    """The request's archives, by their declared sizes, against UPLOAD_MAX_EXPANDED_BYTES.

    A refused archive never expands, so only those that passed their own checks count. 422, not 413:
    the body is within MAX_REQUEST_BYTES (413 says the bytes sent are too many); what is refused is
    what its archives would become, as for a single zip bomb (also 422).
    """
    total, limit = sum(expanded.values()), settings.upload_max_expanded_bytes
    if total <= limit:
        return
    sizes = [f"{name}: {format_size(size)}" for name, size in expanded.items()]
    raise InvalidRequest(
        f"the zip archives of this upload would expand to {format_size(total)} together "
        f"({', '.join(sizes[:5])}{', ...' if len(sizes) > 5 else ''}), above the "
        f"{format_size(limit)} limit per upload; send them in separate uploads",
        errors=[{"loc": "files", "msg": f"{size} when expanded"} for size in sizes[:50]],
    )
