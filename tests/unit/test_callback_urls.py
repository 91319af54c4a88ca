"""Where a webhook may go (issue 13): URL syntax, address policy in every spelling, the API's 422."""

from __future__ import annotations

import io
import ipaddress
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from common.callback_urls import (
    CallbackRefused,
    Unresolved,
    check_callback_url,
    check_target,
    parse_callback_url,
    refusal,
    resolve,
    system_resolver,
)
from common.errors import InvalidRequest
from common.settings import Settings
from common.webhooks import require_allowed_host

PUBLIC = Settings()  # no allowed networks: public addresses only
LOOPBACK_OPEN = Settings(webhook_allowed_networks=["127.0.0.1/32"])  # as the integration stack runs


def answers(*addresses: str) -> Any:
    """A resolver that answers these addresses for any name (a public name, here, without a network)."""
    return lambda host, port: list(addresses)


def failing(errno: int) -> Any:
    def resolver(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(errno, "resolver says no")

    return resolver


# --- syntax (the pydantic validator: 422 at submit) ---


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@hooks.example.com/",  # userinfo, in any form
        "http://user@hooks.example.com/",
        "http://@hooks.example.com/",
        "http://hooks.example.com\\@10.0.0.1/",  # backslash: parsers disagree on where the host ends
        "http://hooks.example.com/a\\b",
        "gopher://hooks.example.com/",
        "file:///etc/passwd",
        "http:hooks.example.com",
        "http://[fe80::1%25eth0]/",  # IPv6 zone
        "http://a%2fb.example.com/",  # an escape urllib3 keeps in the host
        "http://hooks.example.com:0/",
        "http://hooks.example.com/\x00",
        "http://hooks.example.com/\x7f",
        "http://hooks.example.com/\u2028",
        "http://hooks.example.com/ x",
        "https://hooks.example.com/" + "a" * 2048,
        "ftp://example.com/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http:///nohost",
        "example.com/hook",
        "http://example.com:99999/",
        "http://exa mple.com/",
    ],
)
def test_bad_syntax_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_callback_url(url)


def test_the_url_is_read_as_urllib3_sends_it() -> None:
    target = parse_callback_url("HTTPS://Hooks.Example.COM.:8443/a%20b/?x=1#frag")
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "hooks.example.com.",
        8443,
        "/a%20b/?x=1",
    )
    assert target.bare_host == "hooks.example.com" and target.host_header == "hooks.example.com.:8443"
    assert parse_callback_url("http://%31%32%37.0.0.2/").host == "127.0.0.2"  # percent-decoded host
    assert parse_callback_url("http://[::1]/").bare_host == "::1"
    assert parse_callback_url("http://h/").host_header == "h"


# --- addresses ---


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",  # site-local (deprecated, not in every table)
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::a9fe:a9fe",  # NAT64 to 169.254.169.254
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), [])


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), []) == ""


def test_allowed_networks_open_exactly_their_addresses() -> None:
    networks = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.1.0.0/16")]
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "10.1.200.3"):
        assert refusal(ipaddress.ip_address(address), networks) == "", address
    for address in ("127.0.0.2", "::1", "10.2.0.1", "169.254.169.254", "64:ff9b::7f00:1"):
        assert refusal(ipaddress.ip_address(address), networks), address


# --- resolution: every address must pass, the policy sees what getaddrinfo makes of the spelling ---


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # decimal
        "http://017700000001/",  # octal
        "http://0x7f000001/",  # hex
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",  # short dotted
        "http://127.0.1/",
        "http://[::1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[0:0:0:0:0:ffff:7f00:1]/",
        "http://0/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://2852039166/",  # 169.254.169.254
        "http://0xa9fea9fe/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://LOCALHOST/",
        "http://localhost./",
        "http://sub.localhost/",
        "http://%6c%6fcalhost/",  # percent-encoded host
        "http://%31%32%37.0.0.1/",
        "http://127.0.0.1:6379/",  # Redis
    ],
)
def test_every_spelling_of_an_internal_address_is_refused(url: str) -> None:
    with pytest.raises(CallbackRefused, match="not public"):
        check_target(url, PUBLIC, 5, system_resolver)


def test_localhost_stands_for_both_loopback_addresses() -> None:
    """Opening 127.0.0.1 does not open `localhost`: RFC 6761 makes it ::1 too, whatever /etc/hosts says."""
    check_target("http://127.0.0.1:8080/", LOOPBACK_OPEN, 5)
    with pytest.raises(CallbackRefused, match="::1"):
        check_target("http://localhost:8080/", LOOPBACK_OPEN, 5, answers("127.0.0.1"))
    both = Settings(webhook_allowed_networks=["127.0.0.1/32", "::1/128"])
    assert [str(a) for a in check_target("http://localhost/", both, 5).addresses] == ["127.0.0.1", "::1"]


def test_a_public_name_passes_with_all_its_addresses() -> None:
    target = check_target("https://hooks.example.com/x", PUBLIC, 5, answers("93.184.215.14", "2606:4700::1"))
    assert [str(a) for a in target.addresses] == ["93.184.215.14", "2606:4700::1"]
    assert target.bare_host == "hooks.example.com" and target.port == 443


@pytest.mark.parametrize("internal", ["10.0.0.7", "169.254.169.254", "fe80::1%eth0", "::ffff:127.0.0.1"])
def test_one_internal_address_among_public_ones_refuses_the_name(internal: str) -> None:
    with pytest.raises(CallbackRefused, match=r"hooks\.example\.com"):
        check_target("http://hooks.example.com/", PUBLIC, 5, answers("93.184.215.14", internal))


def test_the_resolver_sees_the_bare_host_and_port() -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["93.184.215.14"]

    check_target("https://Hooks.Example.com./x", PUBLIC, 5, resolver)
    check_target("http://[2606:4700::1]:8080/x", PUBLIC, 5, resolver)
    assert asked == [("hooks.example.com", 443), ("2606:4700::1", 8080)]


def test_unknown_and_failing_names_are_told_apart() -> None:
    with pytest.raises(Unresolved) as unknown:
        resolve("nope.example", 80, 5, failing(socket.EAI_NONAME))
    assert unknown.value.not_found
    with pytest.raises(Unresolved) as again:
        resolve("flaky.example", 80, 5, failing(socket.EAI_AGAIN))
    assert not again.value.not_found


def test_a_stuck_resolver_is_left_behind_at_the_timeout() -> None:
    def stuck(host: str, port: int) -> list[str]:
        time.sleep(5)
        return ["93.184.215.14"]

    start = time.monotonic()
    with pytest.raises(Unresolved) as slow:
        resolve("slow.example", 80, 0.3, stuck)
    assert time.monotonic() - start < 2 and not slow.value.not_found


# --- the API's check (require_allowed_host) ---


def test_submit_refuses_internal_addresses_and_unknown_names() -> None:
    with pytest.raises(InvalidRequest, match=r"callback_url .*10\.0\.0\.7.*not public") as refused:
        require_allowed_host("http://hooks.example.com/", PUBLIC, answers("10.0.0.7"))
    assert refused.value.errors[0]["loc"] == "callback_url"
    with pytest.raises(InvalidRequest, match="callback_url host cannot be called"):
        require_allowed_host("http://nope.example/", PUBLIC, failing(socket.EAI_NONAME))


def test_submit_accepts_what_it_cannot_check_now() -> None:
    require_allowed_host("http://flaky.example/", PUBLIC, failing(socket.EAI_AGAIN))  # the delivery checks
    require_allowed_host("http://hooks.example.com/", PUBLIC, answers("93.184.215.14"))
    require_allowed_host(None, PUBLIC, failing(socket.EAI_NONAME))


def test_the_host_allowlist_still_applies_before_any_lookup() -> None:
    settings = Settings(webhook_allowed_hosts=["hooks.example.com"])
    with pytest.raises(InvalidRequest, match="WEBHOOK_ALLOWED_HOSTS"):
        require_allowed_host("http://other.example.com/", settings, failing(socket.EAI_AGAIN))


@pytest.fixture
def app_client(tmp_path: Path) -> Any:
    # Unreachable Redis: a refused callback is refused before anything is stored (a 503 means it passed).
    settings = Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path)
    return create_app(settings).test_client()


def _submissions(client: Any, callback_url: str) -> list[Any]:
    form = {"callback_url": callback_url, "files": (io.BytesIO(b"some text"), "a.txt")}
    return [
        client.post("/api/v1/ask", json={"question": "q", "callback_url": callback_url}),
        client.post("/api/v1/documents", json={"documents": [{"text": "t"}], "callback_url": callback_url}),
        client.post("/api/v1/documents", data=form, content_type="multipart/form-data"),
    ]


@pytest.mark.parametrize(
    "callback_url",
    ["http://169.254.169.254/latest/meta-data/", "http://2130706433:6379/", "http://[::ffff:7f00:1]/"],
)
def test_the_api_answers_422_problems_naming_callback_url(app_client: Any, callback_url: str) -> None:
    for response in _submissions(app_client, callback_url):
        assert response.status_code == 422, response.json
        assert response.mimetype == "application/problem+json"
        assert "callback_url" in response.json["detail"] and "not public" in response.json["detail"]


def test_the_api_lets_a_temporary_lookup_failure_through(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("common.callback_urls.system_resolver", failing(socket.EAI_AGAIN))
    for response in _submissions(app_client, "http://flaky.example/hook"):
        assert response.status_code == 503, response.json  # past the check; Redis is down in this test
