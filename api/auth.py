"""API keys: who is calling, which collections the key may touch, and which jobs are its own.

Keys are configured as SHA-256 digests (`API_KEYS`), never in clear; with no key configured the API is
open (a single-tenant install on a trusted network). `python -m api.auth NAME COLLECTION...` mints one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from flask import Flask, g, request

from common.errors import Forbidden, NotFound, Unauthorized
from common.settings import ApiKey

ALL_COLLECTIONS = "*"


@dataclass(frozen=True)
class Principal:
    """The caller. `name` owns the jobs it submits; `None` means the API is open (no keys configured)."""

    name: str | None
    collections: frozenset[str] | None  # None: every collection

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require(self, collection: str) -> None:
        """For writes and questions that name a collection: a clear 403, the name is the caller's own."""
        if not self.may_use(collection):
            raise Forbidden(f"this API key may not use collection {collection!r}")

    def require_visible(self, collection: str) -> None:
        """For reads of a collection: another tenant's collection looks exactly like a missing one."""
        if not self.may_use(collection):
            raise NotFound(f"no collection {collection!r}")

    def owns(self, owner: str | None) -> bool:
        return self.name is None or owner == self.name


OPEN = Principal(name=None, collections=None)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(header: str | None, keys: Sequence[ApiKey]) -> Principal:
    """The principal for an `Authorization` header; every configured digest is compared in constant time."""
    if not keys:
        return OPEN
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key as `Authorization: Bearer <key>`")
    presented = digest(token.strip())
    match = None
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        if hmac.compare_digest(presented, key.sha256):
            match = key
    if match is None:
        raise Unauthorized("the API key is not valid")
    allowed = None if ALL_COLLECTIONS in match.collections else frozenset(match.collections)
    return Principal(name=match.name, collections=allowed)


def principal() -> Principal:
    return g.get("principal", OPEN)  # type: ignore[no-any-return]


def install(app: Flask, keys: Sequence[ApiKey]) -> None:
    """Authenticate every /api request before its view runs; /healthz and /readyz stay open for probes."""

    @app.before_request
    def _authenticate() -> None:
        if request.path.startswith("/api/"):
            g.principal = authenticate(request.headers.get("Authorization"), keys)


def mint(name: str, collections: Sequence[str]) -> tuple[str, dict[str, object]]:
    """A new random key and the `API_KEYS` entry that admits it (only the digest is stored)."""
    key = "qk_" + secrets.token_urlsafe(32)
    return key, {"name": name, "sha256": digest(key), "collections": list(collections)}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m api.auth NAME COLLECTION... ('*' for every collection)", file=sys.stderr)
        return 2
    key, entry = mint(args[0], args[1:])
    print(f"key (give it to the client; it is not stored): {key}")
    print(f"API_KEYS entry: {json.dumps(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
