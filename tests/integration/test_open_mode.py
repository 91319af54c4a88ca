"""An open API (no API_KEYS) in real headless Chromium: pages of other origins cannot submit work (CSRF),
a host name re-pointed at the API (DNS rebinding) is refused, and its own page, curl and the Python client
still work.

A second API process (gunicorn, as `make run` starts it) runs in open mode beside the session stack, on a
Redis database of its own that nothing consumes: every job it accepts stays there to be counted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import requests
from playwright.sync_api import BrowserContext, Page, expect

from common.job_schema import KEY_PREFIX
from devstack.processes import Supervisor, api_argv, free_port, wait_until
from tests.integration.chromium import chromium
from tests.integration.conftest import TEST_REDIS_DB, Stack

OPEN_DB = int(os.environ.get("QUARRY_OPEN_REDIS_DB", "8" if TEST_REDIS_DB == 9 else "9"))
EVIL = "evil.example"  # the browser resolves it to 127.0.0.1, as an attacker's DNS would (rebinding)
ENV_DROPPED = ("API_KEYS", "TRUSTED_HOSTS", "BROKER_URL", "RESULT_BACKEND_URL", "RATE_LIMIT", "MILVUS_TOKEN")
DOCUMENTS = "/api/v1/documents"
FORGED_FILE = 'new File(["Forged by another origin."], "forged.txt", {type: "text/plain"})'
# (a) a multipart form with a file, submitted by script into a hidden frame
FORM_PAGE = f"""<!doctype html><meta charset="utf-8"><title>form</title>
<iframe name="sink"></iframe>
<form id="f" method="post" enctype="multipart/form-data" action="%(api)s{DOCUMENTS}" target="sink">
<input name="collection" value="csrf"><input id="file" type="file" name="files"></form>
<script>
const files = new DataTransfer();
files.items.add({FORGED_FILE});
document.getElementById("file").files = files.files;
document.getElementById("f").submit();
</script>"""
# (b) a no-cors fetch: the browser sends it and only hides the answer from the page
FETCH_PAGE = f"""<!doctype html><meta charset="utf-8"><title>fetch</title>
<script>
const body = new FormData();
body.append("collection", "csrf");
body.append("files", {FORGED_FILE});
fetch("%(api)s{DOCUMENTS}", {{method: "POST", mode: "no-cors", body}});
</script>"""


@dataclass
class OpenApi:
    url: str
    port: int
    store: redis.Redis

    def jobs(self) -> int:
        """Job records in its Redis database (not their `:docs`/`:events` companions)."""
        return sum(1 for key in self.store.scan_iter(KEY_PREFIX + "*") if key.count(b":") == 2)

    def submit(self, **headers: str) -> requests.Response:
        body = {"collection": "open", "documents": [{"id": "d1", "text": "Open mode still takes work."}]}
        return requests.post(self.url + DOCUMENTS, json=body, headers=headers, timeout=30)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 503  # up; its Milvus is a closed port
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def open_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenApi]:
    tmp, port = tmp_path_factory.mktemp("open-api"), free_port()
    redis_url = urlunsplit(urlsplit(stack.redis_url)._replace(path=f"/{OPEN_DB}"))
    env = {key: value for key, value in os.environ.items() if key not in ENV_DROPPED}
    env |= {
        "API_KEYS": "[]",
        "REDIS_URL": redis_url,
        "MILVUS_URI": f"http://127.0.0.1:{free_port()}",  # submitting work does not need Milvus
        "DATA_DIR": str(tmp / "data"),
        "API_PORT": str(port),
    }
    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    sup = Supervisor(env=env, log_dir=tmp / "logs")
    try:
        proc = sup.start("open-api", api_argv("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), 60, "open API", proc)
        yield OpenApi(url=url, port=port, store=store)
    finally:
        sup.stop()
        store.flushdb()


class _Pages(BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        page = self.pages.get(self.path.split("?")[0])
        data = (page or "not found").encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def attacker(open_api: OpenApi) -> Iterator[int]:
    """The attacker's site: a plain web server on another port (so another origin) serving both pages."""
    api = open_api.url

    class Pages(_Pages):
        pages: ClassVar[dict[str, str]] = {
            "/form.html": FORM_PAGE % {"api": api},
            "/fetch.html": FETCH_PAGE % {"api": api},
        }

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Chromium plus a resolver rule that plays the attacker's DNS: `evil.example` goes to 127.0.0.1."""
    profile = tmp_path_factory.mktemp("chromium-open-mode")
    with chromium(profile, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1") as context:
        yield context


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    yield page
    page.close()


def _attack(page: Page, page_url: str, api: str) -> int:
    """Open an attacker page and return the status the API answered its forged upload with."""
    with page.expect_response(lambda r: r.url == api + DOCUMENTS and r.request.method == "POST") as seen:
        page.goto(page_url)
    return seen.value.status


@pytest.mark.parametrize("site", ["127.0.0.1", "localhost", EVIL])  # same-site, cross-site, cross-site
def test_pages_of_other_origins_cannot_submit_work(
    page: Page, open_api: OpenApi, attacker: int, site: str
) -> None:
    before = open_api.jobs()
    for name in ("form", "fetch"):
        status = _attack(page, f"http://{site}:{attacker}/{name}.html", open_api.url)
        assert status == 403, f"the {name} from http://{site}:{attacker} got {status}"
    assert open_api.jobs() == before  # counted on the server: nothing was created


def test_a_rebound_host_name_is_refused(page: Page, open_api: OpenApi) -> None:
    """DNS rebinding: `evil.example` now resolves to the API, so its page is same-origin with it; the
    Host it sends is still `evil.example`, which the open API does not answer."""
    before = open_api.jobs()
    response = page.goto(f"http://{EVIL}:{open_api.port}/")
    assert response is not None and response.status == 403
    statuses = page.evaluate(
        """async () => {
            const body = new FormData();
            body.append("files", new File(["rebound"], "r.txt", {type: "text/plain"}));
            const post = await fetch("/api/v1/documents", {method: "POST", body});
            const read = await fetch("/api/v1/collections");
            return [post.status, read.status, (await read.json()).detail];
        }"""
    )
    assert statuses[:2] == [403, 403] and "TRUSTED_HOSTS" in statuses[2]
    assert open_api.jobs() == before


def test_host_names_and_origins_outside_a_browser(open_api: OpenApi) -> None:
    before = open_api.jobs()
    refused = open_api.submit(Host=f"{EVIL}:{open_api.port}")
    assert refused.status_code == 403 and refused.headers["Content-Type"] == "application/problem+json"
    assert "TRUSTED_HOSTS" in refused.json()["detail"]
    assert open_api.submit(Origin=f"http://{EVIL}").status_code == 403
    assert open_api.submit(Origin=f"http://127.0.0.1:{open_api.port + 1}").status_code == 403
    assert open_api.jobs() == before
    for headers in ({}, {"Host": f"127.0.0.1:{open_api.port}"}, {"Host": f"localhost:{open_api.port}"}):
        assert open_api.submit(**headers).status_code == 202, headers  # curl, the client, the CLI
    assert open_api.submit(Origin=open_api.url).status_code == 202  # its own origin
    assert open_api.jobs() == before + 4
    probe = requests.get(open_api.url + "/healthz", headers={"Host": "api:8000"}, timeout=30)
    # probes use service names: answered (503 only because this API's Milvus is a closed port), not 403
    assert probe.status_code == 503 and probe.json()["checks"]["redis"]["ok"], probe.text


def test_the_open_page_still_uploads(page: Page, open_api: OpenApi, tmp_path: Path) -> None:
    before = open_api.jobs()
    note = tmp_path / "note.txt"
    note.write_text("Uploaded from the service's own page in open mode.")
    response = page.goto(open_api.url + "/")
    assert response is not None and response.status == 200
    page.fill("#collection", "open-web")
    page.set_input_files("#files", [str(note)])
    page.click("#upload-button")
    expect(page.locator("#upload-status")).to_contain_text("accepted as job")
    assert open_api.jobs() == before + 1
