"""Per-key rate limits (flask-limiter, counters in Redis so every API process shares them)."""

from __future__ import annotations

import math
import time

from flask import Flask, Response, request
from flask_limiter import HeaderNames, Limiter, RateLimitExceeded

from api.auth import principal
from api.problems import problem
from common.settings import Settings


def caller_key() -> str:
    """The API key's name, or the client address when the API is open."""
    name = principal().name
    return f"key:{name}" if name is not None else f"addr:{request.remote_addr or 'unknown'}"


def install(app: Flask, settings: Settings) -> Limiter | None:
    """Limit every /api route to `rate_limit`; /healthz and /readyz never. No setting, no limiter."""
    if not settings.rate_limit:
        return None
    limiter = Limiter(
        caller_key,
        app=app,
        default_limits=[settings.rate_limit],
        default_limits_exempt_when=lambda: not request.path.startswith("/api/"),
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 5},
        key_prefix="quarry-rate",
        headers_enabled=True,
        # flask-limiter would put its window's reset on every response as Retry-After, and overwrite
        # the backpressure 429's own; its value goes in an X- header, Retry-After only on its 429.
        header_name_mapping={HeaderNames.RETRY_AFTER: "X-RateLimit-Retry-After"},
        swallow_errors=True,  # Redis down: answer (the job store then says 503) rather than 500
    )

    @app.errorhandler(RateLimitExceeded)
    def _limited(exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        wait = current.reset_at - time.time() if current else exc.limit.limit.get_expiry()
        response = problem(429, "Too many requests", f"rate limit of {exc.limit.limit} exceeded for this key")
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    return limiter
