"""The open API's Host (DNS rebinding) and Origin (CSRF) checks, on a small app and on `create_app`."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app, guard, problems
from api.auth import digest
from common.settings import ApiKey, Settings

KEYS = [ApiKey(name="k", sha256=digest("qk_k"), collections=["*"])]


def _client(**settings: object) -> FlaskClient:
    app = Flask(__name__)
    problems.register(app)
    guard.install(app, Settings(**settings))  # type: ignore[arg-type]
    for path in ("/x", "/healthz", "/readyz", "/metrics"):
        app.add_url_rule(path, path, lambda: "ok", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    return app.test_client()


def _status(client: FlaskClient, method: str = "GET", path: str = "/x", **headers: str) -> int:
    headers = {key.replace("_", "-"): value for key, value in headers.items()}
    return client.open(path, method=method, headers=headers).status_code


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8000",
        "localhost:8000",
        "LOCALHOST.:8000",
        "[::1]:8000",
        "10.1.2.3",
        "[fe80::1]",
        "0.0.0.0:80",
    ],
)
def test_ip_literals_and_trusted_names_are_answered(host: str) -> None:
    assert _status(_client(), Host=host) == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.nip.io:8000",
        "evil.example@localhost:8000",
        "localhost:8000/x",
        "[::1",
        "attacker-rebinds-this.example",
    ],
)
def test_other_host_names_are_refused_with_a_problem(host: str) -> None:
    response = _client().get("/x", headers={"Host": host})
    assert response.status_code == 403 and response.mimetype == "application/problem+json"
    assert "TRUSTED_HOSTS" in response.json["detail"] and "API_KEYS" in response.json["detail"]  # type: ignore[index]


def test_trusted_hosts_setting_adds_names_and_star_trusts_all() -> None:
    named = _client(trusted_hosts=["Quarry.LAN"])
    assert _status(named, Host="quarry.lan:8000") == 200
    assert _status(named, Host="localhost:8000") == 403  # the list replaces the default
    assert _status(_client(trusted_hosts=["*"]), Host="anything.example") == 200
    with_port = _client(trusted_hosts=["quarry.lan:8000", "::1", "[fe80::2]"])
    assert _status(with_port, Host="quarry.lan:9000") == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_may_use_any_host_name(path: str) -> None:
    assert _status(_client(), path=path, Host="api:8000") == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),  # curl, the Python client, the CLI
        ({"Origin": "http://127.0.0.1:8000"}, 200),
        ({"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),  # typed by the user
        ({"Origin": "https://127.0.0.1:8000"}, 200),  # same host and port (TLS ended by a proxy)
        ({"Origin": "http://127.0.0.1:9000"}, 403),  # another port: another origin
        ({"Origin": "http://localhost:8000"}, 403),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),  # sandboxed frames, no-referrer forms
        ({"Origin": "http://127.0.0.1:8000/path"}, 403),
        ({"Origin": "http://127.0.0.1:notaport"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),  # 127.0.0.1:9000 is same-site but cross-origin
        ({"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "cross-site"}, 403),
    ],
)
def test_unsafe_requests_from_another_origin_are_refused(headers: dict[str, str], status: int) -> None:
    client = _client()
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = client.open("/x", method=method, headers={"Host": "127.0.0.1:8000", **headers})
        assert response.status_code == status, (method, headers, response.get_data(as_text=True))
    assert _status(client, "GET", Host="127.0.0.1:8000", **headers) == 200  # reading is not forging


def test_origin_is_compared_with_the_host_header_and_its_default_port() -> None:
    client = _client(trusted_hosts=["quarry.example"])
    assert _status(client, "POST", Host="quarry.example", Origin="https://quarry.example") == 200
    assert _status(client, "POST", Host="quarry.example", Origin="http://quarry.example") == 200
    assert _status(client, "POST", Host="quarry.example:443", Origin="https://quarry.example") == 200
    assert _status(client, "POST", Host="quarry.example", Origin="http://quarry.example:8080") == 403


def test_with_api_keys_nothing_is_checked() -> None:
    client = _client(api_keys=KEYS)
    assert _status(client, "POST", Host="evil.example", Origin="http://evil.example") == 200


def test_create_app_installs_the_guard_in_open_mode_only() -> None:
    """GET / (the web page) needs no Redis: the guard alone decides."""
    open_app = create_app(Settings(api_keys=[])).test_client()
    assert open_app.get("/", headers={"Host": "evil.example:8000"}).status_code == 403
    assert open_app.get("/", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    post = open_app.post("/api/v1/ask", json={"question": "q"}, headers={"Origin": "http://evil.example"})
    assert post.status_code == 403
    keyed = create_app(Settings(api_keys=KEYS)).test_client()
    assert keyed.get("/", headers={"Host": "evil.example:8000"}).status_code == 200
