"""One webhook POST: resolve once, check, connect to the checked address, all within one deadline.

urllib3 is used directly (not `requests`, not a pool manager): the URL was parsed and its addresses checked
by `common.callback_urls`, and the connection goes to one of exactly those addresses, never to a second
lookup of the name, which an attacker's DNS could answer differently (rebinding). For http the request
carries the URL's `Host`; for https the TLS handshake sends the URL's host as SNI and the certificate must
be valid for it. No proxy from the environment, no redirect, no body read.

`webhook_timeout_s` bounds the whole attempt, not each read: a receiver that sends its status line a byte
at a time would never trip a per-read timeout. Each connection's socket is handed to a `Deadline` whose
timer shuts it down when the time is up, which wakes whatever call is blocked on it (connect is bounded
by a timeout of the time left; the lookup by `common.callback_urls.resolve`).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from types import TracebackType
from typing import NamedTuple

import certifi
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError

from common.callback_urls import CallbackRefused, Resolver, Target, Unresolved, check_target
from common.settings import Settings
from common.webhooks import Verdict, classify

ERROR_CHARS = 500
SEND_ERRORS = (OSError, http.client.HTTPException, HTTPError, ValueError)  # ssl.CertificateError: ValueError


class DeliveryResult(NamedTuple):
    """What one attempt came to: the answer's status (None: no answer), why it failed, what to do next."""

    status: int | None
    error: str | None
    verdict: Verdict


class DeadlineExpired(TimeoutError):
    """The attempt's time is up."""


class Deadline:
    """The time one attempt may take. At its end the watched socket is shut down, so a receiver that
    trickles bytes (each read succeeds, none is ever the last) cannot hold the attempt, nor the thread.

    It keeps a duplicate of the socket's descriptor: shutdown acts on the connection behind every
    descriptor of it, so it also reaches the socket TLS wrapped (wrapping detaches the original object),
    and a duplicate cannot be closed and reused for another connection while the timer still holds it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._end = time.monotonic() + seconds
        self._spare: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()
        self._replace(None)

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0 or self.expired:
            raise DeadlineExpired(f"the {self.seconds:g} s deadline passed")
        return left

    def watch(self, sock: socket.socket) -> socket.socket:
        """Shut `sock`'s connection down at the deadline (at once if it has passed already)."""
        self._replace(sock.dup())
        return sock

    def _replace(self, spare: socket.socket | None) -> None:
        with self._lock:
            old, self._spare = self._spare, spare
            if spare is not None and self.expired:
                _shut(spare)
        if old is not None:
            old.close()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._spare is not None:
                _shut(self._spare)


def _shut(sock: socket.socket) -> None:
    """End the connection both ways; a call blocked on it wakes to an end of stream or an error."""
    with contextlib.suppress(OSError):  # not connected any more: nothing left to wake
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTP(HTTPConnection):
    """A plain connection to one checked address whose socket the deadline watches."""

    deadline: Deadline

    def _new_conn(self) -> socket.socket:
        return self.deadline.watch(super()._new_conn())


class _WatchedHTTPS(HTTPSConnection):
    """A TLS connection to one checked address (SNI and certificate: the URL's host), watched the same."""

    deadline: Deadline

    def _new_conn(self) -> socket.socket:
        return self.deadline.watch(super()._new_conn())  # before the handshake: it is bounded too


def _connection(target: Target, address: str, deadline: Deadline, ca_certs: str | None) -> HTTPConnection:
    timeout = deadline.remaining()
    conn: _WatchedHTTP | _WatchedHTTPS
    if target.scheme == "https":
        name = target.bare_host
        conn = _WatchedHTTPS(
            address,
            target.port,
            timeout=timeout,
            server_hostname=name,
            assert_hostname=name,
            cert_reqs=ssl.CERT_REQUIRED,
            ca_certs=ca_certs or certifi.where(),
        )
    else:
        conn = _WatchedHTTP(address, target.port, timeout=timeout)
    conn.deadline = deadline
    return conn


def _connect(target: Target, deadline: Deadline, ca_certs: str | None) -> HTTPConnection:
    """A connection to the first checked address that answers, in the resolver's order."""
    failure: Exception = OSError("no address")
    for address in target.addresses:
        conn = _connection(target, str(address), deadline, ca_certs)
        try:
            conn.connect()
            return conn
        except SEND_ERRORS as exc:
            conn.close()
            failure = exc
    raise failure


def _exchange(
    target: Target, body: bytes, head: dict[str, str], deadline: Deadline, ca_certs: str | None
) -> tuple[int, str]:
    """(status, reason) of the POST; the answer's body is never read."""
    conn = _connect(target, deadline, ca_certs)
    try:
        conn.request(
            "POST",
            target.path,
            body=body,
            headers={**head, "Host": target.host_header},
            preload_content=False,  # the answer's body is never read
            decode_content=False,
        )
        response = conn.getresponse()
        if deadline.expired:  # http.client takes the end of stream it woke to for the end of the headers
            raise DeadlineExpired(f"the answer was cut at the {deadline.seconds:g} s deadline")
        status, reason = int(response.status), str(response.reason or "")
        response.close()
        return status, reason
    finally:
        conn.close()


def deliver(
    url: str,
    body: bytes,
    head: dict[str, str],
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    ca_certs: str | None = None,
) -> DeliveryResult:
    """POST `body` to `url` once, within `webhook_timeout_s` from lookup to answer.

    A callback the policy refuses (now; the settings may have changed since it was accepted) gives up;
    a lookup that fails, no answer in time and a broken connection are tried again later.
    """
    with Deadline(settings.webhook_timeout_s) as deadline:
        try:
            target = check_target(url, settings, deadline.remaining(), resolver)
            status, reason = _exchange(target, body, head, deadline, ca_certs)
        except CallbackRefused as exc:
            return DeliveryResult(None, str(exc)[:ERROR_CHARS], "give_up")
        except Unresolved as exc:
            return DeliveryResult(None, f"lookup failed: {exc}"[:ERROR_CHARS], "retry")
        except SEND_ERRORS as exc:
            late = f"no answer within the {deadline.seconds:g} s deadline; " if deadline.expired else ""
            return DeliveryResult(None, f"{late}{type(exc).__name__}: {exc}"[:ERROR_CHARS], "retry")
    error = None if 200 <= status < 300 else f"HTTP {status} {reason}".strip()
    return DeliveryResult(status, error, classify(status))
