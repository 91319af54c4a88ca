"""The open API's guard against other web pages: DNS rebinding (Host) and cross-site request forgery.

With no API keys configured, anyone who can reach the port may use the API, and so may any web page the
operator's browser opens: a form or a `no-cors` fetch can POST an upload cross-origin (the browser sends
it, it just hides the answer), and a page on a host name the attacker re-points at 127.0.0.1 (DNS
rebinding) is even same-origin with the API and reads everything. Two checks close that:

- **Host**: the name the request was sent to must be an IP literal (a rebinding attack always uses a
  host name the attacker controls) or one of `TRUSTED_HOSTS`.
- **Origin**: a request that changes something (any method but GET, HEAD, OPTIONS) from a browser must come
  from a page of this very origin. Browsers always send `Origin` on such requests (and Chromium
  `Sec-Fetch-Site` to trustworthy origins); curl, the Python client and the CLI send neither and pass.

`/healthz`, `/readyz` and `/metrics` are exempt: probes and scrapers call them by service name (`api:8000`),
and they hold no tenant data. With API keys configured none of this applies: a bearer key is not ambient
authority (no browser attaches it by itself), and another origin cannot read it from this origin's
localStorage.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Flask, request

from common.errors import Forbidden
from common.settings import Settings

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY_HOST = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
# host[:port], the host a name, an IPv4 literal or a bracketed IPv6 literal; nothing else (no '@', '/').
_HOST = re.compile(r"^(?P<host>\[[0-9A-Za-z:.%_-]+\]|[^\s:/?#@\[\]]+)(?::(?P<port>[0-9]{1,5}))?$")


def split_host(value: str) -> tuple[str, int | None] | None:
    """`(host, port)` of a Host header: host lower-cased, brackets and a trailing dot dropped; None if
    it is not a plain host[:port]."""
    match = _HOST.match(value.strip())
    if match is None:
        return None
    host = match["host"].strip("[]").lower().removesuffix(".")
    return host, int(match["port"]) if match["port"] else None


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def trusted_names(names: Iterable[str]) -> frozenset[str]:
    """TRUSTED_HOSTS as compared: lower case, no brackets, no trailing dot, no port (one written with a
    port trusts the name on every port)."""
    trusted = set()
    for name in names:
        parsed = split_host(name)
        trusted.add(parsed[0] if parsed else name.strip().strip("[]").lower().removesuffix("."))
    return frozenset(trusted)


def check_host(host_header: str, trusted: frozenset[str]) -> None:
    """Refuse a Host that is neither an IP literal nor a trusted name (DNS rebinding)."""
    parsed = split_host(host_header)
    if parsed is not None and (ANY_HOST in trusted or is_ip(parsed[0]) or parsed[0] in trusted):
        return
    shown = host_header[:100]
    raise Forbidden(
        f"this API has no API keys, so it only answers requests sent to an IP address or a trusted host "
        f"name, and {shown!r} is neither (a web page on another name could be using your browser): add the "
        f"name to TRUSTED_HOSTS or configure API_KEYS"
    )


def same_origin(origin: str, host_header: str) -> bool:
    """Whether `Origin` names the host and port this request was sent to (its Host header).

    Only host and port are compared: behind a proxy that ends TLS the request arrives over http while the
    page's origin is https; the port missing from Host is the default of the Origin's scheme.
    """
    target = split_host(host_header)
    try:
        parts = urlsplit(origin.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    if target is None or parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path:
        return False
    host, target_port = target
    return parts.hostname.lower().removesuffix(".") == host and port == (
        target_port or DEFAULT_PORTS[parts.scheme]
    )


def check_origin(origin: str | None, fetch_site: str | None, host_header: str) -> None:
    """Refuse a browser's cross-origin request (CSRF); requests without Origin/Sec-Fetch-Site pass."""
    if fetch_site is not None and fetch_site.strip().lower() in ("cross-site", "same-site"):
        refused = f"a page of another site or origin (Sec-Fetch-Site: {fetch_site.strip()[:20]})"
    elif origin is not None and not same_origin(origin, host_header):
        refused = f"a page of another origin ({origin[:100]!r})"
    else:
        return
    raise Forbidden(
        f"this API has no API keys, so it refuses requests that change something when a browser sends them "
        f"from {refused}; use the page this service serves, call it without a browser, or configure API_KEYS"
    )


def install(app: Flask, settings: Settings) -> None:
    """In open mode, check every request but the exempt paths before anything else runs."""
    if settings.api_keys:
        return
    trusted = trusted_names(settings.trusted_hosts)

    @app.before_request
    def _guard() -> None:
        if request.path in EXEMPT_PATHS:
            return
        host = request.host  # the Host header (or the server's address without one)
        check_host(host, trusted)
        if request.method not in SAFE_METHODS:
            check_origin(request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), host)
