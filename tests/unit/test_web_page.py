"""The web page's serving rules: open (no key, no rate limit), strict headers, no inline code, no HTML sinks.

The page itself is driven in a real browser in tests/integration/test_web.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

from api import create_app
from api.auth import digest
from api.web import STATIC_DIR
from common.settings import ApiKey, Settings

SCRIPTS = ["app.js", "lib.js", "jobs.js", "answer.js"]
ASSETS = {
    **dict.fromkeys(SCRIPTS, "text/javascript"),
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
HTML_SINKS = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function")
OUTSIDE_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/")  # a CDN, a web font, any other host


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    # Keys and a tiny rate limit, and an unreachable Redis: the page must need none of them.
    settings = Settings(
        api_keys=[ApiKey(name="t", sha256=digest("qk_t"), collections=["*"])],
        rate_limit="1/minute",
        redis_url="redis://127.0.0.1:1/0",
        data_dir=tmp_path,
    )
    return create_app(settings)


def _assert_strict(headers: dict[str, str]) -> None:
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_page_is_served_without_a_key_and_with_strict_headers(app: Flask) -> None:
    client = app.test_client()
    for _ in range(3):  # over the 1/minute limit: the page is not limited
        response = client.get("/")
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        _assert_strict(dict(response.headers))
    assert b'<script type="module" src="/static/app.js">' in response.data


@pytest.mark.parametrize(("name", "mimetype"), ASSETS.items())
def test_assets_are_served_with_strict_headers(app: Flask, name: str, mimetype: str) -> None:
    response = app.test_client().get(f"/static/{name}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.data == (STATIC_DIR / name).read_bytes()
    _assert_strict(dict(response.headers))


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/../web.py", "/static/%2e%2e/web.py"])
def test_unknown_or_escaping_asset_paths_are_404_problems(app: Flask, path: str) -> None:
    response = app.test_client().get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_the_api_still_needs_a_key(app: Flask) -> None:
    response = app.test_client().get("/api/v1/collections")
    assert response.status_code == 401
    assert "Content-Security-Policy" not in response.headers  # the API's own headers are not the page's


def test_page_has_no_inline_code_and_no_outside_resources() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script>"
    assert "<style" not in html and " style=" not in html, "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    for name in ["index.html", *ASSETS]:
        text = (STATIC_DIR / name).read_text()
        assert not OUTSIDE_URL.search(text.replace("http://www.w3.org/2000/svg", "")), name


def test_script_never_parses_server_strings_as_html() -> None:
    for name in SCRIPTS:
        script = (STATIC_DIR / name).read_text()
        for sink in HTML_SINKS:
            assert sink not in script, (name, sink)


def test_every_script_module_is_listed() -> None:
    assert sorted(path.name for path in STATIC_DIR.glob("*.js")) == sorted(SCRIPTS)
