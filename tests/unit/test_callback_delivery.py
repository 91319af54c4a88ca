"""One delivery over real sockets on 127.0.0.1 (issue 13): the connection goes to the checked address,
TLS names the URL's host, and one deadline bounds the whole attempt, however slowly a receiver answers."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from workers.delivery import deliver

Handler = Callable[[socket.socket], None]
OPEN = Settings(webhook_allowed_networks=["127.0.0.1/32"], webhook_timeout_s=5)
BODY, HEAD = b'{"event":"job.succeeded"}', {"Content-Type": "application/json", "X-Quarry-Job": "j"}


@dataclass
class Server:
    port: int
    requests: list[bytes] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


@contextmanager
def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """A TCP server on 127.0.0.1 running `handler` on each connection (TLS-wrapped when given a context)."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(listener.getsockname()[1])
    if tls is not None:
        tls.sni_callback = lambda sock, name, context: server.sni.append(name)

    def run(conn: socket.socket) -> None:
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            handler(conn)
        except OSError:
            pass  # the client hung up or failed the handshake
        finally:
            conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=run, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server
    finally:
        listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(rest) < length:
        rest += conn.recv(65536)
    return head + b"\r\n\r\n" + rest


@contextmanager
def receiver(
    status_line: bytes = b"HTTP/1.1 204 No Content", extra: bytes = b"", tls: ssl.SSLContext | None = None
) -> Iterator[Server]:
    """A receiver that records each request and answers `status_line` (+ `extra` header lines)."""
    requests: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        requests.append(read_request(conn))
        conn.sendall(status_line + b"\r\nContent-Length: 0\r\n" + extra + b"\r\n")

    with serve(handler, tls) as server:
        server.requests = requests
        yield server


def named(host: str, *addresses: str) -> Callable[[str, int], list[str]]:
    """A resolver that knows one name (answering once: a second lookup would be a rebinding hole)."""
    calls: list[str] = []

    def resolver(name: str, port: int) -> list[str]:
        assert name == host and not calls, f"looked up {name!r} again after {calls}"
        calls.append(name)
        return list(addresses)

    return resolver


# --- the pinned connection ---


def test_http_goes_to_the_checked_address_and_names_the_url_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved once, by the policy; the socket connects to that address. If anything looked
    the name up again, the system resolver would answer the metadata address."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real("169.254.169.254" if host == "hooks.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with receiver() as server:
        url = f"http://hooks.example.com:{server.port}/hook?a=1"
        outcome = deliver(url, BODY, HEAD, OPEN, resolver=named("hooks.example.com", "127.0.0.1"))
    assert outcome == (204, None, "delivered")
    assert "hooks.example.com" not in looked_up
    (request,) = server.requests
    assert request.startswith(b"POST /hook?a=1 HTTP/1.1\r\n")
    assert f"\r\nHost: hooks.example.com:{server.port}\r\n".encode() in request
    assert b"\r\nX-Quarry-Job: j\r\n" in request and request.endswith(BODY)


def test_the_next_checked_address_is_tried_when_one_refuses() -> None:
    settings = Settings(webhook_allowed_networks=["127.0.0.0/8"])
    with receiver() as server:  # listens on 127.0.0.1 only: 127.0.0.3 refuses the connection
        url = f"http://hooks.example.com:{server.port}/"
        assert (
            deliver(url, BODY, HEAD, settings, resolver=named("hooks.example.com", "127.0.0.3", "127.0.0.1"))[
                0
            ]
            == 204
        )
    assert len(server.requests) == 1


def test_an_address_the_policy_refuses_at_delivery_gives_up_without_connecting() -> None:
    with receiver() as server:
        url = f"http://hooks.example.com:{server.port}/"
        status, error, verdict = deliver(
            url, BODY, HEAD, OPEN, resolver=named("hooks.example.com", "127.0.0.1", "10.0.0.9")
        )
    assert (status, verdict) == (None, "give_up") and error is not None
    assert "10.0.0.9" in error and "not public" in error
    assert server.requests == []


def test_a_failed_lookup_is_tried_again() -> None:
    def down(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    status, error, verdict = deliver("http://hooks.example.com/", BODY, HEAD, OPEN, resolver=down)
    assert (status, verdict) == (None, "retry") and "lookup failed" in str(error)


def test_a_redirect_is_not_followed() -> None:
    with receiver(b"HTTP/1.1 302 Found", b"Location: http://169.254.169.254/\r\n") as server:
        outcome = deliver(f"http://127.0.0.1:{server.port}/", BODY, HEAD, OPEN)
    assert outcome == (302, "HTTP 302 Found", "give_up") and len(server.requests) == 1


def test_the_answer_body_is_never_read() -> None:
    """A 200 announcing a gigabyte it then trickles is delivered at once: only the status counts."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"
    with serve(trickle(b"x" * 100, answer)) as server:
        start = time.monotonic()
        outcome = deliver(f"http://127.0.0.1:{server.port}/", BODY, HEAD, OPEN)
    assert outcome == (200, None, "delivered") and time.monotonic() - start < 2


# --- one deadline for the whole attempt ---


def trickle(slow: bytes, fast: bytes = b"", every_s: float = 0.5) -> Handler:
    """A receiver that reads the request, sends `fast` at once, then `slow` one byte every `every_s` s."""

    def handler(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(fast)
        for byte in slow:
            conn.sendall(bytes([byte]))
            time.sleep(every_s)

    return handler


@pytest.mark.parametrize(
    ("fast", "slow"),
    [
        (b"", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),  # the status line, a byte at a time
        (b"HTTP/1.1 200 OK\r\n", b"X-Slow: y\r\n" * 20),  # then headers that never end
    ],
)
def test_a_trickling_receiver_cannot_hold_the_attempt_past_its_deadline(fast: bytes, slow: bytes) -> None:
    """Each byte arrives well within any per-read timeout; only a total deadline ends this. An answer cut
    by the deadline is no answer, even after a 200 status line."""
    settings = Settings(webhook_allowed_networks=["127.0.0.1/32"], webhook_timeout_s=1.5)
    with serve(trickle(slow, fast)) as server:
        start = time.monotonic()
        status, error, verdict = deliver(f"http://127.0.0.1:{server.port}/", BODY, HEAD, settings)
        took = time.monotonic() - start
    assert (status, verdict) == (None, "retry") and "1.5 s deadline" in str(error)
    assert 1.4 < took < 2.5, took


def test_a_receiver_that_never_reads_cannot_hold_the_send() -> None:
    settings = Settings(webhook_allowed_networks=["127.0.0.1/32"], webhook_timeout_s=1)
    stop = threading.Event()

    def silent(conn: socket.socket) -> None:
        stop.wait(10)  # accepts, never reads: the send buffers fill up

    with serve(silent) as server:
        start = time.monotonic()
        outcome = deliver(f"http://127.0.0.1:{server.port}/", b"x" * (64 << 20), HEAD, settings)
        took = time.monotonic() - start
        stop.set()
    assert outcome.verdict == "retry" and took < 2, (outcome, took)


# --- https: SNI and certificate for the URL's host, connection to the checked address ---


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and a certificate it signed for hooks.example.com (openssl command line)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    path = tmp_path_factory.mktemp("certs")
    (path / "leaf.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:hooks.example.com\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext"]
    commands = [
        ["req", "-x509", *ec, *ca_ext, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Quarry test CA"],
        ["req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=hooks.example.com"],
        ["x509", "-req", "-in", "leaf.csr", *sign, "-out", "leaf.pem"],
    ]
    for command in commands:
        subprocess.run(["openssl", *command], cwd=path, check=True, capture_output=True)
    return path


def tls_context(certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "leaf.pem", certs / "leaf.key")
    return context


def test_https_sends_sni_and_checks_the_certificate_of_the_url_host(certs: Path) -> None:
    with receiver(tls=tls_context(certs)) as server:
        url = f"https://hooks.example.com:{server.port}/hook"
        outcome = deliver(
            url,
            BODY,
            HEAD,
            OPEN,
            resolver=named("hooks.example.com", "127.0.0.1"),
            ca_certs=str(certs / "ca.pem"),
        )
    assert outcome == (204, None, "delivered")
    assert server.sni == ["hooks.example.com"]
    assert f"\r\nHost: hooks.example.com:{server.port}\r\n".encode() in server.requests[0]


@pytest.mark.parametrize("host", ["other.example.com", "127.0.0.1"])
def test_https_refuses_a_certificate_for_another_host(certs: Path, host: str) -> None:
    with receiver(tls=tls_context(certs)) as server:
        url = f"https://{host}:{server.port}/hook"
        status, error, verdict = deliver(
            url, BODY, HEAD, OPEN, resolver=lambda name, port: ["127.0.0.1"], ca_certs=str(certs / "ca.pem")
        )
    assert (status, verdict) == (None, "retry") and "certificate" in str(error).lower()
    assert not any(server.requests)  # the handshake ended, nothing was sent


def test_https_without_the_ca_fails_verification(certs: Path) -> None:
    with receiver(tls=tls_context(certs)) as server:
        url = f"https://hooks.example.com:{server.port}/hook"
        outcome = deliver(url, BODY, HEAD, OPEN, resolver=named("hooks.example.com", "127.0.0.1"))
    assert outcome.verdict == "retry" and "certificate" in str(outcome.error).lower()


def test_the_deadline_reaches_through_tls(certs: Path) -> None:
    """The watchdog shuts the connection under the TLS layer down: a trickle over https ends too."""
    settings = Settings(webhook_allowed_networks=["127.0.0.1/32"], webhook_timeout_s=1.5)
    with serve(trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), tls_context(certs)) as server:
        start = time.monotonic()
        outcome = deliver(
            f"https://hooks.example.com:{server.port}/",
            BODY,
            HEAD,
            settings,
            resolver=named("hooks.example.com", "127.0.0.1"),
            ca_certs=str(certs / "ca.pem"),
        )
        took = time.monotonic() - start
    assert outcome.verdict == "retry" and "deadline" in str(outcome.error) and took < 2.5, (outcome, took)
