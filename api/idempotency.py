"""`Idempotency-Key` on POSTs: a retried submission gets the job the first one created, not a second job.

The key is scoped to the caller (API key name) and bound to a fingerprint of the request, so reusing a key
for a different request is a 422 rather than a silent replay.

A claim lives in two states. `pending` while its request records and queues the job, for only
`idempotency_pending_s`: a request that dies there (its process killed) frees the key by itself, and a
replay meanwhile is told 409 "still in progress", never a job id that may never come to exist. `done`
once the job is queued, for `idempotency_ttl_s`: a replay then answers with that job. A request that
fails releases its claim, so the client's retry can submit. Every script is safe to run twice (the
Redis client retries a command whose reply was lost): each compares the job id it was given.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import redis
from flask import request

from common.errors import Conflict, InvalidRequest
from common.redis_client import redis_errors

PREFIX = "quarry:idem:"
HEADER = "Idempotency-Key"
VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, as the IETF draft's examples
PENDING, DONE = "pending", "done"
RETRY_AFTER_S = 1  # a live first request records its job in milliseconds to seconds

# KEYS[1] claim; ARGV: value, pending TTL. The claim in place (ours again after a retried call), or nil
# when this call made it.
_CLAIM = """
local current = redis.call('get', KEYS[1])
if current then return current end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# KEYS[1] claim; ARGV: job id, done value, TTL. Promotes our own claim, or writes it again when it
# expired meanwhile; 0 when another request holds the key (its pending window ran out under us).
_PROMOTE = """
local current = redis.call('get', KEYS[1])
if current and cjson.decode(current)['job_id'] ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS[1] claim; ARGV: job id. Deletes the claim only while it is ours.
_RELEASE = """
local current = redis.call('get', KEYS[1])
if current and cjson.decode(current)['job_id'] == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


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


@dataclass(frozen=True)
class Claim:
    """The key's holder: `job_id`, and whether this request just claimed it (`new`)."""

    job_id: str
    new: bool


class IdempotencyKeys:
    """Claims in Redis; one Lua script per step, so two concurrent retries agree on one job."""

    def __init__(self, client: redis.Redis, ttl_s: int, pending_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.pending_s = pending_s
        self._claim = client.register_script(_CLAIM)
        self._promote = client.register_script(_PROMOTE)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def name(scope: str, key: str) -> str:
        return PREFIX + hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()

    @staticmethod
    def _value(fingerprint: str, job_id: str, state: str) -> str:
        return json.dumps({"fingerprint": fingerprint, "job_id": job_id, "state": state})

    def claim(self, scope: str, key: str, fingerprint: str, job_id: str) -> Claim:
        """Claim `key` (pending) for `job_id`, or find who holds it.

        Raises InvalidRequest when the key was used for another request, and Conflict while the holder's
        job is not queued yet: the id a replay got then might never exist.
        """
        with redis_errors():
            raw = self._claim(
                keys=[self.name(scope, key)], args=[self._value(fingerprint, job_id, PENDING), self.pending_s]
            )
        if raw is None:
            return Claim(job_id, new=True)
        stored = json.loads(raw)
        if stored["fingerprint"] != fingerprint:
            raise InvalidRequest(f"{HEADER} {key!r} was already used for a different request; use a new key")
        if stored["job_id"] == job_id:  # our own claim: the script ran twice (a reply was lost)
            return Claim(job_id, new=True)
        if stored.get("state", DONE) == PENDING:  # claims written before this state existed are done
            raise Conflict(
                f"a request with {HEADER} {key!r} is still being processed; retry in a moment (if that "
                f"request was cut off, the key is free again within {self.pending_s} s)",
                retry_after_s=RETRY_AFTER_S,
            )
        return Claim(str(stored["job_id"]), new=False)

    def promote(self, scope: str, key: str, fingerprint: str, job_id: str) -> bool:
        """The job is queued: keep the claim for `ttl_s`. False when another request took the key."""
        with redis_errors():
            done = self._value(fingerprint, job_id, DONE)
            return bool(self._promote(keys=[self.name(scope, key)], args=[job_id, done, self.ttl_s]))

    def release(self, scope: str, key: str, job_id: str) -> None:
        """Forget a claim whose submission failed, so the client's retry can submit again."""
        with redis_errors():
            self._release(keys=[self.name(scope, key)], args=[job_id])
