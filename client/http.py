"""Synchronous HTTP client for the Quarry API: submit work, follow jobs, surface problem+json errors.

Depends only on requests (no torch, no server code) so scripts, notebooks and the bulk loader can use it
from any machine that can reach the API.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from client.multipart import MultipartBody

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
CSV_OPTIONS = frozenset({"text_column", "id_column", "title_column"})
LONG_POLL_S = 20.0
MIN_POLL_INTERVAL_S = 0.25
"""Floor between polls, so a server that answers long polls early is not hammered."""
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 5.0

_sleep = time.sleep  # looked up at call time so tests can skip real waiting


class QuarryError(Exception):
    """A non-2xx answer; carries the problem+json title and detail so callers can show the server's reason."""

    def __init__(
        self, status: int, title: str, detail: str = "", *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status
        self.title = title
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class Job:
    """A snapshot of a job as the API reported it; poll again (or `wait`) for a newer one."""

    job_id: str
    kind: str = ""
    state: str = "queued"
    progress: dict[str, int] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    callback: dict[str, Any] | None = None  # webhook delivery: {"url", "state", "attempts", ...}
    collection: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        """Build from the job JSON, ignoring fields newer servers may add."""
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(**{**values, "progress": dict(values.get("progress") or {})})

    @property
    def done(self) -> bool:
        """True once the job can no longer change state."""
        return self.state in TERMINAL_STATES


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_of(response: requests.Response) -> QuarryError:
    """QuarryError from an error response: problem+json when the server sent it, else the raw text."""
    title, detail = response.reason or "HTTP error", response.text.strip()[:2000]
    if "json" in response.headers.get("Content-Type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            title = str(body.get("title") or title)
            detail = str(body.get("detail") or "")
    return QuarryError(
        response.status_code, title, detail, retry_after=_retry_after(response.headers.get("Retry-After"))
    )


def retry_delay(exc: Exception, backoff: Iterator[float]) -> float:
    """How long to wait before trying again after `exc` (the server's Retry-After, else the next back-off
    step); raises `exc` when trying again cannot help."""
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return next(backoff)
    if isinstance(exc, QuarryError) and exc.status in RETRY_STATUSES:
        return exc.retry_after if exc.retry_after is not None else next(backoff)
    raise exc


def backoff_delays() -> Iterator[float]:
    """Exponential, jittered delays so many waiting clients do not hit a recovering server in step."""
    delay = BACKOFF_START_S
    while True:
        yield delay / 2 + random.uniform(0, delay / 2)
        delay = min(delay * 2, BACKOFF_MAX_S)


class QuarryClient:
    """Client for one Quarry deployment. Safe to share between threads for polling."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.session = session or requests.Session()

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        """Send a request and return its JSON body; any non-2xx becomes a QuarryError."""
        headers = {"Accept": "application/json, application/problem+json", **self.auth_headers()}
        headers.update(kwargs.pop("headers", {}))
        response = self.session.request(
            method, self.base_url + path, headers=headers, timeout=timeout or self.timeout, **kwargs
        )
        if not 200 <= response.status_code < 300:
            raise error_of(response)
        try:
            return response.json()
        except ValueError:
            raise QuarryError(response.status_code, "Invalid response", "expected a JSON body") from None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _submit(self, path: str, **kwargs: Any) -> str:
        """POST something that answers 202 {"job_id", "status_url"}; returns the job id."""
        return str(self._request("POST", path, **kwargs)["job_id"])

    def upload_files(
        self,
        paths: Sequence[Path],
        *,
        collection: str | None = None,
        on_duplicate: str | None = None,
        csv_options: Mapping[str, str] | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Upload files as one ingest job, streaming them from disk; returns the job id.

        `callback_url`, on this and every submit method: the server POSTs the job there when it ends.
        """
        if not paths:
            raise ValueError("upload_files needs at least one path")
        unknown = set(csv_options or {}) - CSV_OPTIONS
        if unknown:
            raise ValueError(f"unknown csv option(s): {', '.join(sorted(unknown))}")
        form = _without_none(
            collection=collection, on_duplicate=on_duplicate, callback_url=callback_url, **(csv_options or {})
        )
        body = MultipartBody(form, [Path(p) for p in paths])
        return self._submit("/api/v1/documents", data=body, headers={"Content-Type": body.content_type})

    def submit_documents(
        self,
        documents: Sequence[Mapping[str, Any]],
        *,
        collection: str | None = None,
        on_duplicate: str | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Submit documents as JSON ({"id"?, "text", "title"?, "metadata"?}); returns the job id."""
        body = _without_none(
            documents=list(documents),
            collection=collection,
            on_duplicate=on_duplicate,
            callback_url=callback_url,
        )
        return self._submit("/api/v1/documents", json=body)

    def ask(
        self,
        question: str,
        *,
        top_k: int | None = None,
        collection: str | None = None,
        rerank: bool | None = None,
        callback_url: str | None = None,
    ) -> str:
        """Start a search job; the answer is the finished job's `result`."""
        body = _without_none(
            question=question, top_k=top_k, collection=collection, rerank=rerank, callback_url=callback_url
        )
        return self._submit("/api/v1/ask", json=body)

    def job(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", job_path(job_id)))

    def wait(
        self, job_id: str, *, timeout: float | None = None, on_update: Callable[[Job], None] | None = None
    ) -> Job:
        """Long-poll until the job is terminal, riding out restarts and overload with backoff.

        Raises TimeoutError once `timeout` seconds have passed, QuarryError on non-retryable answers.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = backoff_delays()
        while True:
            remaining = LONG_POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
            started = time.monotonic()
            try:
                job = self._poll(job_id, min(remaining, LONG_POLL_S))
            except (requests.ConnectionError, requests.Timeout, QuarryError) as exc:
                delay = retry_delay(exc, backoff)
            else:
                backoff = backoff_delays()
                if on_update is not None:
                    on_update(job)
                if job.done:
                    return job
                delay = MIN_POLL_INTERVAL_S - (time.monotonic() - started)
            if deadline is not None and time.monotonic() + max(delay, 0.0) >= deadline:
                _sleep(max(0.0, deadline - time.monotonic()))
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
            if delay > 0:
                _sleep(delay)

    def watch(
        self, job_id: str, *, timeout: float | None = None, on_update: Callable[[Job], None] | None = None
    ) -> Job:
        """Like `wait`, but each change arrives as it happens (Server-Sent Events, `client.events`);
        long-polls where the server cannot stream."""
        from client.events import follow  # noqa: PLC0415 - client.events builds on this module

        return follow(self, job_id, timeout=timeout, on_update=on_update)

    def _poll(self, job_id: str, wait_s: float) -> Job:
        params = {"wait": round(wait_s, 3)}
        return Job.from_json(
            self._request("GET", job_path(job_id), params=params, timeout=self.timeout + wait_s)
        )

    def job_documents(
        self, job_id: str, *, status: str | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Per-document outcomes of an ingest job ({"doc_id", "status", "reason", "chunks"}), page by page."""
        return self._pages(job_path(job_id) + "/documents", page_size, status=status)

    def documents(self, collection: str, *, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """Every document of a collection, page by page (Milvus serves the first 16,384)."""
        return self._pages(f"/api/v1/collections/{quote(collection, safe='')}/documents", page_size)

    def _pages(self, path: str, page_size: int, **params: Any) -> Iterator[dict[str, Any]]:
        """Follow `next_offset` until it is null."""
        offset: int | None = 0
        while offset is not None:
            page = self._request("GET", path, params=_without_none(**params, offset=offset, limit=page_size))
            yield from page.get("items", [])
            next_offset = page.get("next_offset")
            if next_offset is not None and next_offset <= offset:
                raise QuarryError(200, "Invalid response", f"next_offset {next_offset} does not advance")
            offset = next_offset

    def jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        collection: str | None = None,
        created_after: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """This key's jobs, newest first (without their results), following the server's cursor."""
        cursor: str | None = None
        while True:
            params = _without_none(
                state=state, kind=kind, collection=collection, created_after=created_after, cursor=cursor
            )
            page = self._request("GET", "/api/v1/jobs", params={**params, "limit": page_size})
            yield from (Job.from_json(item) for item in page.get("items", []))
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def retry(self, job_id: str) -> str:
        """Ask the server to run a job again (POST .../retry); returns the new job's id."""
        return self._submit(job_path(job_id) + "/retry")

    def cancel(self, job_id: str) -> Job:
        return Job.from_json(self._request("DELETE", job_path(job_id)))

    def collections(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/v1/collections").get("items", []))

    def collection(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/v1/collections/{quote(name, safe='')}"))


def job_path(job_id: str) -> str:
    return f"/api/v1/jobs/{quote(job_id, safe='')}"


def _without_none(**values: Any) -> dict[str, Any]:
    """Leave unset options out of a request, so the server's defaults apply."""
    return {key: value for key, value in values.items() if value is not None}
