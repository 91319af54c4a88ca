"""Where a webhook may go: the `callback_url` syntax, the host allowlist and the address policy (SSRF).

A callback makes a worker send a request to a place the client chose, from inside the operator's
network. So the URL is parsed by `urllib3.util.parse_url`, the parser of the library that sends it (two
parsers that disagree on the host are the classic way past a check), and every address its host resolves
to must be public (globally routable) unless it lies in `WEBHOOK_ALLOWED_NETWORKS`. Numeric spellings
(2130706433, 0x7f.1, 0177.0.0.1, 127.1) need no rule of their own: the resolver turns them into the
address they mean, and the address is what is checked. The API checks at submit (422); the worker checks
again at delivery and connects to exactly the addresses it checked (`workers.delivery`), so a name that
changes its answer in between (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from common.settings import Settings

MAX_URL_CHARS = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # (host, port) -> addresses, as getaddrinfo gives them
DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_CHARS = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")  # a name (lowered, IDNA-encoded by urllib3) or IPv6
# RFC 6761: localhost names mean loopback, whatever /etc/hosts says; they are never looked up, and stand for
# both loopback addresses so that opening 127.0.0.1 alone does not open a name some hosts map to ::1.
LOCALHOST_ADDRESSES = ("127.0.0.1", "::1")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the low 32 bits are the IPv4
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


class CallbackRefused(Exception):
    """The callback may not be called: host not on the allowlist, or an address that is not allowed."""


class Unresolved(Exception):
    """The host gave no address: `not_found` when the name does not exist, else a (maybe) passing failure."""

    def __init__(self, detail: str, *, not_found: bool) -> None:
        super().__init__(detail)
        self.not_found = not_found


@dataclass(frozen=True)
class Target:
    """A callback URL as urllib3 reads it, and the addresses its host resolved to, all of them allowed."""

    scheme: str
    host: str  # as in the URL, lower case, IDNA-encoded, IPv6 in brackets
    port: int
    path: str  # the request target: path and query
    addresses: tuple[IPAddress, ...] = ()

    @property
    def bare_host(self) -> str:
        """The host to resolve, or to name in SNI and in the certificate check: no brackets, no final dot."""
        return self.host.strip("[]").rstrip(".")

    @property
    def host_header(self) -> str:
        return self.host if self.port == DEFAULT_PORTS[self.scheme] else f"{self.host}:{self.port}"


def parse_callback_url(url: str) -> Target:
    """The URL's parts, or ValueError saying what is wrong with it (the pydantic validator's message)."""
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"must be at most {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    if "\\" in url:  # parsers disagree on what a backslash ends: refuse it rather than guess
        raise ValueError("must not contain a backslash")
    try:
        parts = parse_url(url)
    except LocationParseError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("must be an http:// or https:// URL")
    if parts.auth is not None or "@" in _authority(url):
        raise ValueError("must not carry a user name or password (user:pass@)")
    if not parts.host:
        raise ValueError("must name a host")
    if not HOST_CHARS.fullmatch(parts.host):  # '%' left in it: an IPv6 zone, or an escape urllib3 keeps
        raise ValueError(f"has a host with characters no host name has ({parts.host!r})")
    if parts.port == 0:
        raise ValueError("must not use port 0")
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    return Target(parts.scheme, parts.host, port, parts.request_uri)


def _authority(url: str) -> str:
    """What lies between `//` and the path, query or fragment: where user information would be."""
    rest = url.split("//", 1)[1] if "//" in url else ""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def check_callback_url(url: str) -> str:
    """Pydantic validator of `callback_url` (syntax only; addresses are checked by `check_target`)."""
    parse_callback_url(url)
    return url


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Whether a host is on the allowlist (empty: any host); `*.example.com` allows subdomains."""
    if not allowed:
        return True
    host = host.lower().strip("[]").rstrip(".")
    for entry in (item.lower().strip("[]").rstrip(".") for item in allowed):
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def check_target(url: str, settings: Settings, timeout_s: float, resolver: Resolver | None = None) -> Target:
    """The callback's target with its addresses, each one allowed; raises CallbackRefused or Unresolved.

    `resolver` defaults to `system_resolver` (getaddrinfo), looked up when called so tests can replace it.
    """
    try:
        target = parse_callback_url(url)
    except ValueError as exc:
        raise CallbackRefused(f"callback_url {exc}") from None
    if not host_allowed(target.host, settings.webhook_allowed_hosts):
        raise CallbackRefused(f"callback_url host {target.host!r} is not allowed (WEBHOOK_ALLOWED_HOSTS)")
    addresses = resolve(target.bare_host, target.port, timeout_s, resolver or system_resolver)
    networks = [ipaddress.ip_network(entry, strict=False) for entry in settings.webhook_allowed_networks]
    for address in addresses:
        why = refusal(address, networks)
        if why:
            raise CallbackRefused(
                f"callback_url host {target.host!r} resolves to {address}, which is {why}; only public "
                "addresses and WEBHOOK_ALLOWED_NETWORKS may be called"
            )
    return Target(target.scheme, target.host, target.port, target.path, addresses)


def refusal(address: IPAddress, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """Why a callback may not reach this address ("" when it may): it must be public, or opened."""
    if any(address in network for network in networks):
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        inner = refusal(address.ipv4_mapped, networks)  # the same IPv4 host, spelled in IPv6
        return f"{address.ipv4_mapped} in IPv6 form, {inner}" if inner else ""
    if isinstance(address, ipaddress.IPv6Address) and address in NAT64:
        inner = refusal(_low32(address), ())  # the gateway's IPv4 network is not ours to open
        return f"{_low32(address)} through NAT64, {inner}" if inner else ""
    kind = _special_kind(address)
    if kind:
        return f"not public ({kind})"
    wrapped = _tunnelled_ipv4(address)
    if wrapped is not None and _special_kind(wrapped):
        return f"a tunnel to {wrapped}, not public ({_special_kind(wrapped)})"
    return ""


def _special_kind(address: IPAddress) -> str:
    """The kind of a non-public address ("" for a public one): Python's tables plus what they miss."""
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("IPv4-compatible", isinstance(address, ipaddress.IPv6Address) and address in IPV4_COMPATIBLE),
        ("not globally routable", not address.is_global),  # 100.64.0.0/10 (shared) among others
    )
    return next((name for name, hit in checks if hit), "")


def _tunnelled_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 end of a 6to4 or Teredo address, where its packets are delivered."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    return address.teredo[1] if address.teredo is not None else None


def _low32(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def resolve(host: str, port: int, timeout_s: float, resolver: Resolver) -> tuple[IPAddress, ...]:
    """Every address of `host`, in the resolver's order, within `timeout_s` (a stuck resolver is left)."""
    if host == "localhost" or host.endswith(".localhost"):
        return tuple(ipaddress.ip_address(item) for item in LOCALHOST_ADDRESSES)
    box: list[Sequence[str] | BaseException] = []

    def run() -> None:
        try:
            box.append(resolver(host, port))
        except BaseException as exc:  # handed to the caller's thread
            box.append(exc)

    worker = threading.Thread(target=run, name="callback-resolve", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not box:
        raise Unresolved(f"{host}: no answer from the resolver within {timeout_s:.1f} s", not_found=False)
    answer = box[0]
    if isinstance(answer, BaseException):
        raise _unresolved(host, answer) from answer
    addresses = tuple(dict.fromkeys(ipaddress.ip_address(item.split("%", 1)[0]) for item in answer))
    if not addresses:
        raise Unresolved(f"{host}: the resolver gave no address", not_found=True)
    return addresses


def _unresolved(host: str, exc: BaseException) -> Unresolved:
    codes = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    not_found = isinstance(exc, socket.gaierror) and exc.errno in codes
    return Unresolved(f"{host} does not resolve ({exc})", not_found=not_found)


def system_resolver(host: str, port: int) -> list[str]:
    """The machine's resolver (getaddrinfo), TCP addresses of any family."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
