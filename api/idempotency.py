"""`Idempotency-Key` on POSTs: a retried submission gets the job the first one created, not a second job.

The key is scoped to the caller (API key name), remembered for `idempotency_ttl_s`, and bound to a
fingerprint of the request, so reusing a key for a different request is a 422 rather than a silent replay.
"""

from __future__ import annotations

import hashlib
import json
import re

import redis
from flask import request

from common.errors import InvalidRequest
from common.redis_client import redis_errors

PREFIX = "quarry:idem:"
HEADER = "Idempotency-Key"
VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, as the IETF draft's examples


def header_key() -> str | None:
    """The request's Idempotency-Key, validated; None when the client sent none."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not VALID_KEY.match(key):
        raise InvalidRequest(f"{HEADER} must be 1 to 255 printable ASCII characters without spaces")
    return key


def request_fingerprint() -> str:
    """What makes two submissions "the same": method, path, and the body's content (not its encoding)."""
    h = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    if request.mimetype == "multipart/form-data":
        for name, value in sorted(request.form.items(multi=True)):
            h.update(f"form {name}={value}\n".encode())
        for name, upload in sorted(request.files.items(multi=True), key=lambda item: item[0]):
            content = hashlib.sha256(upload.stream.read()).hexdigest()
            upload.stream.seek(0)
            h.update(f"file {name} {upload.filename} {content}\n".encode())
    elif request.is_json:
        body = request.get_json(silent=True)
        h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    else:
        h.update(request.get_data(cache=True))
    return h.hexdigest()


class IdempotencyKeys:
    """Claims in Redis: SET NX makes two concurrent retries agree on one job."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    @staticmethod
    def _name(scope: str, key: str) -> str:
        return PREFIX + hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()

    def claim(self, scope: str, key: str, fingerprint: str, job_id: str) -> str:
        """Bind `key` to `job_id`; return the job id it is already bound to when this is a retry."""
        value = json.dumps({"fingerprint": fingerprint, "job_id": job_id})
        for _ in range(3):  # a claim may expire between SET NX and GET: try again
            with redis_errors():
                if self.client.set(self._name(scope, key), value, nx=True, ex=self.ttl_s):
                    return job_id
                raw = self.client.get(self._name(scope, key))
            if raw is not None:
                stored = json.loads(raw)
                if stored["fingerprint"] != fingerprint:
                    raise InvalidRequest(
                        f"{HEADER} {key!r} was already used for a different request; use a new key"
                    )
                return str(stored["job_id"])
        raise InvalidRequest(f"{HEADER} {key!r} could not be claimed; retry")

    def release(self, scope: str, key: str) -> None:
        """Forget a claim whose submission failed, so the client's retry can submit again."""
        with redis_errors():
            self.client.delete(self._name(scope, key))
