"""Checking Quarry's webhooks on the receiving side; standard library only (no server code, no torch).

Quarry signs each webhook body with HMAC-SHA256 under `WEBHOOK_SECRET` and sends it as
`X-Quarry-Signature: sha256=<hex>`. Verify the raw bytes of the body, before parsing the JSON.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Quarry-Signature"
_PREFIX = "sha256="


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """True when `header` (the X-Quarry-Signature value) is the HMAC-SHA256 of `body` under `secret`.

    Constant-time: a forger learns nothing from how long the comparison took. A missing or malformed
    header, or an empty secret, is False.
    """
    if not header or not secret or not header.startswith(_PREFIX):
        return False
    key = secret.encode() if isinstance(secret, str) else secret
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    given = header[len(_PREFIX) :].strip().lower().encode()  # bytes: any header, even non-ASCII
    return hmac.compare_digest(expected.encode(), given)
