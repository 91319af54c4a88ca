"""What /healthz may show of a connection URL, and scrubbing configured secrets out of error text.

Connection URLs carry credentials in many spellings the client libraries accept: user info (with '@'
inside a password, percent-encoded or not), query strings (`?password=`, which redis-py reads), Milvus
tokens. An operator needs the scheme, host, port and database or vhost, so `display_*` rebuild exactly
that from the parse the library itself uses (urllib for redis-py and pymilvus, kombu's own parser for the
broker) and never copy user info, query or fragment. Libraries also echo URLs in their errors (pymilvus
puts the whole URI in some), so every error shown first goes through `Redactor.scrub`, which removes
each configured secret in each spelling it could appear in.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from kombu.utils.url import url_to_parts

from common.settings import Settings

MASK = "***"
SHORT_SECRET = 4  # shorter secrets are masked only where they stand alone (not inside other words)
# Query parameters holding a credential (redis-py passes any it does not know on as a keyword).
_SECRET_PARAM = re.compile(r"pass|pwd|user|token|secret|key|auth|cred|login", re.IGNORECASE)
# Any `scheme://userinfo@` or credential query parameter left in a text, configured or not.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"([?&;](?:[\w.-]*(?:pass|pwd|token|secret)[\w.-]*)=)[^&;#\s'\"]*", re.IGNORECASE)
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def hidden(scheme: str, why: str) -> str:
    return f"{scheme}://(hidden: {why})" if scheme else f"(hidden: {why})"


def _scheme(url: str) -> str:
    """The scheme, only when one precedes `://` (`user:pw@host` has none, though urllib finds `user`)."""
    match = _SCHEME.match(url)
    return match[1] if match else ""


def _host(host: str | None) -> str:
    if host and ":" in host:
        return f"[{host}]"  # an IPv6 literal
    return host or ""


def _render(scheme: str, host: str | None, port: int | None, path: str = "") -> str:
    return f"{scheme}://{_host(host)}{f':{port}' if port else ''}{path}"


def _cut_short(path: str, query: str, fragment: str) -> bool:
    """'@' after the authority (in the path, a query name or the fragment): an unencoded '/', '?' or '#'
    in a password cut the user info short, so the parsed host and port may be the user name and part of
    the password. ('@' in a query value, as in `?password=p@ss`, is fine.)"""
    names = [field.partition("=")[0] for field in re.split(r"[&;]", query)]
    return "@" in path or "@" in fragment or any("@" in name for name in names)


ENCODE = "percent-encode '@', '/', '?' and '#' in the user name and password"
UNPARSABLE = "the URL does not parse (a port that is not a number, an unclosed '[')"


def _shown(render: Callable[[str], str], url: str) -> str:
    """`render(url)`, or a note when urllib refuses the URL (it raises ValueError; so does the library)."""
    try:
        return render(url)
    except ValueError:
        return hidden(_scheme(url), UNPARSABLE)


def display_redis(url: str) -> str:
    """REDIS_URL as redis-py reads it: scheme, host, port and database (or the socket path)."""
    return _shown(_display_redis, url)


def _display_redis(url: str) -> str:
    scheme = _scheme(url)
    if scheme.lower() not in _REDIS_SCHEMES:
        return hidden("", "not a redis://, rediss:// or unix:// URL")
    parts = urlsplit(url)
    if _cut_short(parts.path, parts.query, parts.fragment):
        return hidden(scheme, ENCODE)
    query_db = dict(parse_qsl(parts.query)).get("db", "")
    if scheme.lower() == "unix":
        return f"unix://{unquote(parts.path)}" + (f"?db={query_db}" if query_db.isdigit() else "")
    db = query_db or unquote(parts.path).replace("/", "")
    return _render(scheme, parts.hostname, parts.port, f"/{db}" if db.isdigit() else "")


def display_broker(url: str) -> str:
    """The broker as kombu reads it (`;` separates fail-over URLs): scheme, host, port and vhost."""
    return ";".join(_shown(_display_kombu, part) for part in failover_urls(url))


def _display_kombu(url: str) -> str:
    scheme = _scheme(url)
    if not scheme:
        return hidden("", "not a URL")
    if ";" in url:  # a piece without a scheme was joined back: the ';' was in the user info
        return hidden(scheme, "kombu splits URLs at ';': percent-encode it in the password as %3B")
    rest = urlsplit("http://" + url[len(scheme) + 3 :])  # kombu parses with HTTP URL semantics
    if _cut_short(rest.path, rest.query, rest.fragment):
        return hidden(scheme, ENCODE)
    parts = url_to_parts(url)
    return _render(scheme, parts.hostname, parts.port, f"/{parts.path}" if parts.path else "")


def display_milvus(uri: str) -> str:
    """MILVUS_URI as pymilvus reads it: a local `.db` file, or scheme, host, port and database."""
    return _shown(_display_milvus, uri)


def _display_milvus(uri: str) -> str:
    scheme = _scheme(uri)
    if not scheme:
        if uri.startswith("unix:") and "@" not in uri:
            return uri.split("?", 1)[0].split("#", 1)[0]
        return uri if uri.endswith(".db") and "@" not in uri else hidden("", "not a URL")
    parts = urlsplit(uri)
    if _cut_short(parts.path, parts.query, parts.fragment):
        return hidden(scheme, ENCODE)
    if scheme.lower() == "unix":
        return f"unix://{parts.path}"
    db = parts.path.strip("/").split("/")[0]
    return _render(scheme, parts.hostname, parts.port, f"/{db}" if db else "")


def url_secrets(url: str) -> set[str]:
    """Every credential a URL holds, as its parser reads it and as a person meant it."""
    if not url:
        return set()
    meant = url.split("://", 1)[-1].rpartition("@")[0]  # up to the last '@'
    try:
        parts = urlsplit(url if "://" in url else "//" + url)
    except ValueError:  # no library can use it either; hide all it might have meant
        return _userinfo_secrets({meant}) | {url}
    infos = {parts.netloc.rpartition("@")[0]}
    if _cut_short(parts.path, parts.query, parts.fragment):  # what was meant, and what the parser saw
        infos |= {meant, parts.netloc, meant[len(parts.netloc) + 1 :]}
    found = _userinfo_secrets(infos)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    found |= {value for key, value in pairs if _SECRET_PARAM.search(key)}
    for field in re.split(r"[&;]", parts.query):
        key, _, value = field.partition("=")
        if _SECRET_PARAM.search(unquote(key)):
            found.add(value)  # as written, before decoding
    return found - {""}


def _userinfo_secrets(infos: set[str]) -> set[str]:
    found: set[str] = set()
    for info in infos - {""}:
        for piece in {info, *info.split(";")}:  # kombu splits fail-over URLs on ';', even in a password
            user, _, password = piece.partition(":")
            found |= {piece, user, password}
    return found - {""}


def failover_urls(url: str) -> list[str]:
    """The URLs of a kombu fail-over list (`;`-separated), a piece without a scheme joined back to the one
    before it: that ';' was inside a password, where kombu cuts it too."""
    urls: list[str] = []
    for piece in url.split(";"):
        if urls and not _scheme(piece):
            urls[-1] += ";" + piece
        else:
            urls.append(piece)
    return urls


def token_secrets(token: str | None) -> set[str]:
    """A Milvus token: the whole, its `user:password` halves, and the base64 gRPC sends it as."""
    if not token:
        return set()
    user, _, password = token.partition(":")
    return {token, user, password, base64.b64encode(token.encode()).decode()} - {""}


def spellings(secret: str) -> set[str]:
    """The ways one secret can appear in text: as configured, decoded, (re-)encoded, escaped."""
    decoded = unquote(secret)
    forms = {secret, decoded}
    for text in (secret, decoded):
        forms |= {quote(text, safe=""), quote(text), quote_plus(text), repr(text)[1:-1]}
        forms |= {json.dumps(text)[1:-1], text.replace("'", "\\'"), text.replace('"', '\\"')}
    return forms - {""}


@dataclass(frozen=True)
class Redactor:
    """Removes configured secrets from text; case-insensitive, longest spelling first."""

    secrets: tuple[str, ...]

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Redactor:
        forms = {form for secret in secrets for form in spellings(secret)}
        return cls(tuple(sorted(forms, key=lambda s: (-len(s), s))))

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """Every credential Quarry is configured with: the connection URLs, MILVUS_TOKEN, WEBHOOK_SECRET."""
        found: set[str] = set()
        for url in (settings.redis_url, settings.milvus_uri):
            found |= url_secrets(url)
        for url in (settings.broker, settings.result_backend):
            found |= {secret for part in failover_urls(url) for secret in url_secrets(part)}
        found |= token_secrets(settings.milvus_token)
        if settings.webhook_secret is not None:
            found.add(settings.webhook_secret.get_secret_value())
        return cls.of(found)

    def scrub(self, text: str) -> str:
        """`text` without any configured secret, nor any URL user info or password parameter."""
        text = _USERINFO.sub(rf"\1{MASK}@", text)
        text = _QUERY_SECRET.sub(rf"\1{MASK}", text)
        long = [re.escape(s) for s in self.secrets if len(s) >= SHORT_SECRET]
        short = [re.escape(s) for s in self.secrets if len(s) < SHORT_SECRET]
        if long:
            text = re.sub("|".join(long), MASK, text, flags=re.IGNORECASE)
        if short:  # "ab" inside "unreachable" gives nothing away; "ab" alone might
            pattern = rf"(?<![A-Za-z0-9])(?:{'|'.join(short)})(?![A-Za-z0-9])"
            text = re.sub(pattern, MASK, text, flags=re.IGNORECASE)
        return text

    def error(self, exc: BaseException, limit: int = 300) -> str:
        """An exception's message fit to show: scrubbed first, then cut to its first line and `limit`."""
        scrubbed = self.scrub(str(exc)).strip()
        first = scrubbed.splitlines()[0] if scrubbed else type(exc).__name__
        return first[:limit]
