"""The Python client and the bulk loader against a tiny in-process fake of the HTTP API."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from werkzeug.formparser import parse_form_data

from client import Job, QuarryClient, QuarryError
from client import bulk as loader
from client import http as client_http
from client import multipart as client_multipart

Reply = tuple[int, dict[str, str], bytes]
DROP: Reply = (0, {}, b"")
"""Close the connection without answering, as a restarting server would."""


def reply(status: int, body: Any, **headers: str) -> Reply:
    kind = "application/problem+json" if status >= 400 else "application/json"
    return status, {"Content-Type": kind, **headers}, json.dumps(body).encode()


def job_json(job_id: str, state: str, error: str | None = None, **progress: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "ingest",
        "state": state,
        "progress": {"done": 0, "total": 0, **progress},
        "result": None,
        "error": error,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
    }


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeQuarry:
    """Just enough of the API contract; job answers are scripted per job id (the last one repeats)."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    jobs: dict[str, list[Reply]] = field(default_factory=dict)
    documents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[str, list[Reply]] = field(default_factory=dict)  # scripted like `jobs`, per connection
    submitted: int = 0

    def handle(self, req: Seen) -> Reply:
        self.seen.append(req)
        parts = req.path.removeprefix("/api/v1/").split("/")
        if req.method == "POST":  # documents, ask and jobs/<id>/retry all start a job
            self.submitted += 1
            job_id = f"job-{self.submitted}"
            return reply(202, {"job_id": job_id, "status_url": f"/api/v1/jobs/{job_id}"}, Location=job_id)
        if parts[0] == "jobs":
            return self._job(req.method, parts[1:], req.query)
        if parts == ["collections"]:
            return reply(200, {"items": [{"name": "docs", "chunks": 3}]})
        if parts[0] == "collections":
            return reply(200, {"name": unquote(parts[1]), "chunks": 3})
        return 500, {"Content-Type": "text/plain"}, b"upstream exploded"

    def _job(self, method: str, parts: list[str], query: dict[str, list[str]]) -> Reply:
        if parts[1:] == ["documents"]:
            return self._documents(parts[0], query)
        if parts[1:] == ["events"] and parts[0] in self.events:
            script = self.events[parts[0]]
            return script.pop(0) if len(script) > 1 else script[0]
        if method == "DELETE":
            return reply(200, job_json(parts[0], "cancelled"))
        if parts[0] in self.jobs:
            script = self.jobs[parts[0]]
            return script.pop(0) if len(script) > 1 else script[0]
        return reply(404, {"title": "Not Found", "status": 404, "detail": f"no job {parts[0]!r}"})

    def _documents(self, job_id: str, query: dict[str, list[str]]) -> Reply:
        status = query.get("status", [None])[0]
        items = [item for item in self.documents.get(job_id, []) if status in (None, item["status"])]
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        next_offset = offset + limit if offset + limit < len(items) else None
        return reply(
            200, {"items": items[offset : offset + limit], "total": len(items), "next_offset": next_offset}
        )

    def uploads(self) -> list[tuple[dict[str, str], dict[str, bytes]]]:
        """Each multipart upload as (form fields, file name -> content), parsed like the real API does."""
        result = []
        for req in self.seen:
            if req.headers.get("Content-Type", "").startswith("multipart/form-data"):
                environ = {
                    "REQUEST_METHOD": "POST",
                    "CONTENT_TYPE": req.headers["Content-Type"],
                    "CONTENT_LENGTH": str(len(req.body)),
                    "wsgi.input": io.BytesIO(req.body),
                }
                _, form, files = parse_form_data(environ)
                result.append((dict(form), {f.filename: f.read() for f in files.getlist("files")}))
        return result


class Handler(BaseHTTPRequestHandler):
    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        req = Seen(self.command, url.path, parse_qs(url.query), dict(self.headers), body)
        status, headers, payload = self.server.fake.handle(req)  # type: ignore[attr-defined]
        if status == 0:
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake(server: ThreadingHTTPServer) -> FakeQuarry:
    server.fake = FakeQuarry(url=f"http://127.0.0.1:{server.server_address[1]}")  # type: ignore[attr-defined]
    return server.fake  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's back-off sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(client_http, "_sleep", recorded.append)
    return recorded


def test_upload_streams_files_and_fields_as_multipart(fake: FakeQuarry, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\nbody")
    (tmp_path / "rows.csv").write_bytes(b"id,text\r\n1,\x00binary\r\n")
    client = QuarryClient(fake.url + "/", api_key="secret")
    job_id = client.upload_files(
        [tmp_path / "a.md", tmp_path / "rows.csv"],
        collection="docs",
        on_duplicate="replace",
        csv_options={"text_column": "text", "id_column": "id"},
    )
    assert job_id == "job-1"
    (req,) = fake.seen
    assert req.headers["Authorization"] == "Bearer secret"
    assert "Transfer-Encoding" not in req.headers and int(req.headers["Content-Length"]) == len(req.body)
    ((form, files),) = fake.uploads()
    assert form == {"collection": "docs", "on_duplicate": "replace", "text_column": "text", "id_column": "id"}
    assert files == {"a.md": b"# Title\n\nbody", "rows.csv": b"id,text\r\n1,\x00binary\r\n"}
    with pytest.raises(ValueError, match="text_col"):
        client.upload_files([tmp_path / "a.md"], csv_options={"text_col": "x"})


def test_multipart_body_is_read_from_disk_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * (client_multipart.CHUNK_BYTES * 2 + 10))
    body = client_multipart.MultipartBody({"collection": "c"}, [big])
    chunks = list(body)
    assert max(len(chunk) for chunk in chunks) <= client_multipart.CHUNK_BYTES
    assert len(chunks) >= 3 and sum(map(len, chunks)) == len(body)


def test_json_submissions_leave_unset_options_out(fake: FakeQuarry) -> None:
    client = QuarryClient(fake.url)
    assert client.submit_documents([{"id": "d", "text": "t"}], collection="c") == "job-1"
    assert client.ask("why?", top_k=3) == "job-2"
    bodies = [json.loads(req.body) for req in fake.seen]
    assert bodies == [
        {"documents": [{"id": "d", "text": "t"}], "collection": "c"},
        {"question": "why?", "top_k": 3},
    ]
    assert "Authorization" not in fake.seen[0].headers


def test_wait_follows_states_and_honours_retry_after(fake: FakeQuarry, sleeps: list[float]) -> None:
    fake.jobs["j"] = [
        reply(503, {"title": "Service Unavailable", "detail": "redis down"}, **{"Retry-After": "2"}),
        reply(200, job_json("j", "running", done=1, total=2)),
        reply(200, job_json("j", "succeeded", done=2, total=2, chunks=5)),
    ]
    updates: list[Job] = []
    job = QuarryClient(fake.url).wait("j", on_update=updates.append)
    assert job.done and job.state == "succeeded" and job.progress["chunks"] == 5
    assert [update.state for update in updates] == ["running", "succeeded"]
    assert sleeps[0] == 2.0
    assert [req.query["wait"] for req in fake.seen] == [["20.0"]] * 3


def test_wait_backs_off_on_dropped_connections(fake: FakeQuarry, sleeps: list[float]) -> None:
    fake.jobs["j"] = [DROP, DROP, reply(200, job_json("j", "failed", error="worker lost"))]
    job = QuarryClient(fake.url).wait("j")
    assert job.state == "failed" and job.error == "worker lost"
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_wait_raises_timeout_error(fake: FakeQuarry) -> None:
    fake.jobs["j"] = [reply(200, job_json("j", "running"))]
    with pytest.raises(TimeoutError):
        QuarryClient(fake.url).wait("j", timeout=0)
    assert fake.seen[0].query["wait"] == ["0.0"]


def test_problem_json_and_plain_errors_become_quarry_errors(fake: FakeQuarry) -> None:
    client = QuarryClient(fake.url)
    with pytest.raises(QuarryError) as info:
        client.job("nope")
    assert (info.value.status, info.value.title, info.value.detail) == (404, "Not Found", "no job 'nope'")
    with pytest.raises(QuarryError, match=r"^500 .*upstream exploded"):
        client._request("GET", "/api/v1/boom")


def test_job_documents_pages_through_next_offset(fake: FakeQuarry) -> None:
    fake.documents["j"] = [
        {"doc_id": f"d{i}", "status": "failed", "reason": "r", "chunks": 0} for i in range(5)
    ]
    fake.documents["j"].append({"doc_id": "ok", "status": "succeeded", "reason": None, "chunks": 2})
    docs = list(QuarryClient(fake.url).job_documents("j", status="failed", page_size=2))
    assert [doc["doc_id"] for doc in docs] == ["d0", "d1", "d2", "d3", "d4"]
    assert [req.query["offset"] for req in fake.seen] == [["0"], ["2"], ["4"]]


def test_retry_cancel_and_collections(fake: FakeQuarry) -> None:
    client = QuarryClient(fake.url)
    assert client.retry("j") == "job-1"
    assert client.cancel("j").state == "cancelled"
    assert client.collections() == [{"name": "docs", "chunks": 3}]
    assert client.collection("a/b") == {"name": "a/b", "chunks": 3}  # one quoted path segment
    assert [(req.method, req.path) for req in fake.seen][:2] == [
        ("POST", "/api/v1/jobs/j/retry"),
        ("DELETE", "/api/v1/jobs/j"),
    ]


def make_files(root: Path, sizes: dict[str, int]) -> list[Path]:
    for name, size in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    return [root / name for name in sizes]


def test_batches_split_by_count_and_bytes(tmp_path: Path) -> None:
    a, b, c, big, e, f = make_files(tmp_path, {"a": 10, "b": 10, "c": 10, "big.jsonl": 200, "e": 50, "f": 60})
    batches = loader.plan_uploads([a, b, c, big, e, f], max_files=2, max_bytes=100)
    assert batches == [[a, b], [c], [big], [e], [f]]


def test_directories_expand_sorted_without_hidden_files(tmp_path: Path) -> None:
    make_files(tmp_path, {"b.md": 1, "sub/a.txt": 1, ".hidden.md": 1, ".git/x.md": 1, "sub/.y.md": 1})
    assert loader.expand_paths([tmp_path, tmp_path / "b.md"]) == [tmp_path / "b.md", tmp_path / "sub/a.txt"]
    make_files(tmp_path, {"other/b.md": 1})
    with pytest.raises(loader.LoaderError, match="share a name"):
        loader.check_unique_names(loader.expand_paths([tmp_path]))


def test_progress_sums_both_ways_of_counting_done() -> None:
    contract = Job("a", state="running", progress={"done": 2, "total": 5, "failed": 1, "chunks": 4})
    explicit = Job("b", state="running", progress={"done": 3, "total": 3, "succeeded": 1, "skipped": 2})
    assert loader.sum_progress([contract, explicit]) == {
        "total": 8,
        "succeeded": 3,
        "failed": 1,
        "skipped": 2,
        "chunks": 4,
    }


def test_loader_end_to_end_prints_failures(fake: FakeQuarry, tmp_path: Path, capsys: Any) -> None:
    make_files(tmp_path, {"a.md": 5, "b.md": 5, "c.txt": 0})
    fake.jobs["job-1"] = [
        reply(200, job_json("job-1", "running", total=2)),
        reply(200, job_json("job-1", "succeeded", done=2, total=2, chunks=4)),
    ]
    fake.jobs["job-2"] = [reply(200, job_json("job-2", "succeeded", failed=1, total=1))]
    fake.documents["job-2"] = [
        {"doc_id": "c.txt", "status": "failed", "reason": "file is empty", "chunks": 0}
    ]
    args = [str(tmp_path), "--collection", "docs", "--api", fake.url, "--batch-files", "2"]
    assert loader.main(args) == 1
    out = capsys.readouterr().out
    assert "2 documents succeeded, 1 failed, 0 skipped; 4 chunks written; 2 jobs" in out
    assert "  c.txt: file is empty" in out
    assert [sorted(files) for _, files in fake.uploads()] == [["a.md", "b.md"], ["c.txt"]]
    assert fake.uploads()[0][0] == {"collection": "docs"}


def test_loader_json_reports_a_failed_job_with_exit_code_2(
    fake: FakeQuarry, tmp_path: Path, capsys: Any
) -> None:
    make_files(tmp_path, {"a.md": 5})
    fake.jobs["job-1"] = [reply(200, job_json("job-1", "failed", error="WorkerLostError", total=1))]
    assert loader.main([str(tmp_path / "a.md"), "--collection", "c", "--api", fake.url, "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert summary["exit_code"] == 2 and summary["jobs"][0]["state"] == "failed"
    assert summary["errors"] == ["job job-1 failed: WorkerLostError"]


def test_loader_usage_and_connection_errors_exit_2(fake: FakeQuarry, tmp_path: Path, capsys: Any) -> None:
    assert loader.main([str(tmp_path / "missing"), "--collection", "c", "--api", fake.url]) == 2
    assert "missing: no such file" in capsys.readouterr().err
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    make_files(tmp_path, {"a.md": 1})
    assert loader.main([str(tmp_path), "--collection", "c", "--api", dead, "--json"]) == 2
    assert "upload 1/1" in json.loads(capsys.readouterr().out)["errors"][0]
    assert loader.main([str(tmp_path), "--collection", "c", "--api", fake.url, "--no-wait"]) == 0
    assert capsys.readouterr().out.strip() == "job-1"


def sse(*events: tuple[str, str, dict[str, Any]], retry: int = 0) -> Reply:
    """One connection's stream: (id, event, job) each, then the server closes it."""
    text = f"retry: {retry}\n\n: heartbeat\n\n" + "".join(
        f"id: {eid}\nevent: {name}\ndata: {json.dumps(body)}\n\n" for eid, name, body in events
    )
    return 200, {"Content-Type": "text/event-stream; charset=utf-8"}, text.encode()


def test_watch_follows_events_and_resumes_from_the_last_id(fake: FakeQuarry, sleeps: list[float]) -> None:
    fake.events["j"] = [
        sse(("q-1", "state", job_json("j", "queued")), ("r-1", "state", job_json("j", "running")), retry=250),
        (503, {"Content-Type": "application/problem+json", "Retry-After": "2"}, b"{}"),
        sse(("r-2", "progress", job_json("j", "running", done=1, total=2))),
        sse(("s-1", "end", {**job_json("j", "succeeded", done=2, total=2), "result": {"chunks": 4}})),
    ]
    seen: list[tuple[str, int]] = []
    job = QuarryClient(fake.url, api_key="k").watch(
        "j", on_update=lambda j: seen.append((j.state, j.progress["done"]))
    )
    assert job.state == "succeeded" and job.result == {"chunks": 4}
    assert seen == [("queued", 0), ("running", 0), ("running", 1), ("succeeded", 2)]
    asked = [req.headers.get("Last-Event-ID") for req in fake.seen if req.path.endswith("/events")]
    assert asked == [None, "r-1", "r-1", "r-2"]  # each connection resumes where the last one stopped
    assert sleeps == [0.25, 2.0, 0.0]  # the server's retry, then its Retry-After
    assert all(req.headers["Authorization"] == "Bearer k" for req in fake.seen)


def test_watch_long_polls_where_the_server_does_not_stream(fake: FakeQuarry) -> None:
    fake.jobs["old"] = [reply(200, job_json("old", "running")), reply(200, job_json("old", "succeeded"))]
    fake.events["old"] = [reply(404, {"title": "Not Found", "status": 404, "detail": "no such route"})]
    assert QuarryClient(fake.url).watch("old").state == "succeeded"
    assert [req.query.get("wait") for req in fake.seen if not req.path.endswith("/events")][-1] is not None


def test_watch_raises_a_missing_job_and_a_stream_that_says_it_expired(fake: FakeQuarry) -> None:
    with pytest.raises(QuarryError) as missing:
        QuarryClient(fake.url).watch("nope")
    assert missing.value.status == 404
    gone = (
        200,
        {"Content-Type": "text/event-stream"},
        b'event: error\ndata: {"status": 404, "title": "Not Found"}\n\n',
    )
    fake.events["gone"] = [gone]
    with pytest.raises(QuarryError) as expired:
        QuarryClient(fake.url).watch("gone")
    assert expired.value.status == 404
