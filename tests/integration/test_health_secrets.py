"""/healthz against real Redis, RabbitMQ and milvus-lite with credentials in every spelling the client
libraries accept, at live and at dead ports: no credential appears anywhere in the answer (body or
headers), while each check still names its host and port.

The app is `create_app` with Flask's test client: the checks themselves talk to the real services.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from api import create_app
from common.settings import Settings
from devstack.processes import Supervisor, free_port, port_open, redis_answers, start_milvus
from tests.integration.conftest import TEST_REDIS_DB

REDIS = "127.0.0.1:6379"
RABBIT = "127.0.0.1:5672"  # guest/guest


@dataclass
class Case:
    """Settings with credentials, the secrets in them, and what each check must show."""

    settings: dict[str, Any]
    secrets: list[str]
    ok: dict[str, bool]  # check -> expected "ok"
    where: dict[str, str]  # check -> "host:port" the check must name
    needs_rabbit: bool = False
    short: list[str] = field(default_factory=list)  # < 4 characters: must not stand alone


def _cases(milvus: int) -> dict[str, Case]:
    db, dead = TEST_REDIS_DB, free_port()
    live_milvus = f"127.0.0.1:{milvus}"
    return {
        "live-userinfo": Case(
            {
                "redis_url": f"redis://:Redis-Pa55-live@{REDIS}/{db}",  # the default user has no password
                "broker_url": f"amqp://gu%65st:gu%65st@{RABBIT}//",  # guest, percent-encoded
                "milvus_uri": f"http://root:Milvus-Pa55-uri@{live_milvus}",
            },
            ["Redis-Pa55-live", "guest", "gu%65st", "root:Milvus-Pa55-uri", "Milvus-Pa55-uri"],
            {"redis": True, "broker": True, "milvus": True},
            {"redis": REDIS, "broker": RABBIT, "milvus": live_milvus},
            needs_rabbit=True,
        ),
        "live-query-and-token": Case(
            {
                "redis_url": f"redis://{REDIS}/{db}?password=Query-Pa55-x",
                "broker_url": f"redis://:Broker%2DPa55%21@{REDIS}/{db}",  # kombu takes no ?password=
                "milvus_uri": f"http://{live_milvus}",
                "milvus_token": "tok-user-x:Tok-Pa55-x",
            },
            ["Query-Pa55-x", "Broker-Pa55!", "Broker%2DPa55", "tok-user-x", "Tok-Pa55-x"],
            {"redis": True, "broker": True, "milvus": True},
            {"redis": REDIS, "broker": REDIS, "milvus": live_milvus},
        ),
        "live-refused-credentials": Case(
            {
                "redis_url": f"redis://alice-user-x:p@ss-w0rd-x@{REDIS}/{db}",  # '@' in the password
                "broker_url": f"amqp://guest:Wr0ng-Amqp-Pa55@{RABBIT}//",
                "milvus_uri": f"http://{live_milvus}",
                "milvus_token": "Api-Key-Token-0123456789",
            },
            ["alice-user-x", "p@ss-w0rd-x", "ss-w0rd-x", "Wr0ng-Amqp-Pa55", "Api-Key-Token-0123456789"],
            {"redis": False, "broker": False, "milvus": True},
            {"redis": REDIS, "broker": RABBIT, "milvus": live_milvus},
            needs_rabbit=True,
        ),
        "dead-ports": Case(
            {
                "redis_url": f"rediss://tls-user-x:Tls-Pa55%2Fx@127.0.0.1:{dead}/3",
                "broker_url": f"amqp://mq-user-x:Mq-Pa55%40x@127.0.0.1:{dead}/vh-x",
                "milvus_uri": f"http://milvus-user-x:Milvus-Pa55-dead@127.0.0.1:{dead}",
                "milvus_token": "dead-tok-user:Dead-Tok-Pa55",
            },
            [
                "tls-user-x",
                "Tls-Pa55/x",
                "mq-user-x",
                "Mq-Pa55@x",
                "milvus-user-x",
                "Milvus-Pa55-dead",
                "dead-tok-user",
                "Dead-Tok-Pa55",
            ],
            {"redis": False, "broker": False, "milvus": False},
            {"redis": f"127.0.0.1:{dead}", "broker": f"127.0.0.1:{dead}", "milvus": f"127.0.0.1:{dead}"},
        ),
        "dead-unix-ipv6-illegal": Case(
            {
                "redis_url": "unix://:Sock-Pa55-x@/tmp/quarry-no-such-dir/redis.sock?db=2",
                "broker_url": f"redis://:Broker-Pa55-v6@[::1]:{dead}/1",
                "milvus_uri": f"ftp://root-x:Illegal-Scheme-Pa55@127.0.0.1:{dead}",  # pymilvus echoes it
            },
            ["Sock-Pa55-x", "Broker-Pa55-v6", "root-x", "Illegal-Scheme-Pa55"],
            {"redis": False, "broker": False, "milvus": False},
            {"redis": "/tmp/quarry-no-such-dir/redis.sock", "broker": f"[::1]:{dead}", "milvus": f":{dead}"},
        ),
        "cut-short-passwords": Case(
            {
                "redis_url": f"redis://{REDIS}/{db}",
                "broker_url": f"amqp://cut-user-x:Cut;Pa55-semi@{RABBIT}//",  # kombu cuts it at ';'
                "milvus_uri": f"http://mil-user-x:Mil#Pa55-hash@{live_milvus}",  # urllib cuts it at '#'
            },
            ["cut-user-x", "Cut;Pa55-semi", "Pa55-semi", "mil-user-x", "Mil#Pa55-hash", "Pa55-hash"],
            {"redis": True, "broker": False, "milvus": False},
            {"redis": REDIS},
            short=["Cut", "Mil"],
        ),
    }


@pytest.fixture(scope="module")
def milvus_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A milvus-lite server of this module's own (it does not need the whole stack)."""
    if not redis_answers(f"redis://{REDIS}/{TEST_REDIS_DB}"):
        pytest.fail(f"these checks need the real Redis at {REDIS}")
    tmp, port = tmp_path_factory.mktemp("health-secrets"), free_port()
    sup = Supervisor(env=dict(os.environ), log_dir=tmp / "logs")
    try:
        start_milvus(sup, f"http://127.0.0.1:{port}", tmp / "milvus")
        yield port
    finally:
        sup.stop()


def _spellings(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1]}


@pytest.mark.parametrize(
    "name",
    [
        "live-userinfo",
        "live-query-and-token",
        "live-refused-credentials",
        "dead-ports",
        "dead-unix-ipv6-illegal",
        "cut-short-passwords",
    ],
)
def test_healthz_shows_no_credential_but_names_each_host(name: str, milvus_port: int, tmp_path: Path) -> None:
    case = _cases(milvus_port)[name]
    if case.needs_rabbit and not port_open("127.0.0.1", 5672):
        pytest.skip(f"no RabbitMQ at {RABBIT}")
    settings = Settings(**case.settings, api_keys=[], data_dir=tmp_path, milvus_timeout_s=3)
    response = create_app(settings).test_client().get("/healthz")
    body = response.get_data(as_text=True)
    headers = "\n".join(f"{key}: {value}" for key, value in response.headers.items())
    checks = response.json["checks"]  # type: ignore[index]
    # Every form the answer could be read in: raw JSON, decoded JSON, headers.
    seen = "\n".join([body, json.dumps(response.json, ensure_ascii=False), headers]).lower()
    for secret in case.secrets:
        for form in _spellings(secret):
            assert form.lower() not in seen, f"{form!r} leaked in {body}"
    for secret in case.short:
        assert not re.search(rf"(?<![a-z0-9]){re.escape(secret.lower())}(?![a-z0-9])", seen), body
    assert response.status_code == (200 if all(case.ok.values()) else 503), body
    for check, ok in case.ok.items():
        assert checks[check]["ok"] is ok, (check, checks[check])
        assert ok or checks[check]["error"], checks[check]
    for check, where in case.where.items():
        shown = checks[check].get("url") or checks[check].get("uri")
        assert where in shown, (check, shown)
