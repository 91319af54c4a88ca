"""The one place where errors become HTTP: RFC 9457 problem+json for every error response."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from common import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.QuarryError], int] = {
    errors.InvalidRequest: 422,
    errors.NotFound: 404,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.TooManyRequests: 429,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.Conflict: 409,
    errors.ServiceUnavailable: 503,
    errors.ModelUnavailable: 503,
    errors.DocumentError: 422,
}


def problem_body(status: int, title: str, detail: str) -> dict[str, Any]:
    """RFC 9457's members every problem has (an answer's, or an event stream's `error` event's)."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {**problem_body(status, title, detail), "instance": request.path}
    response = jsonify({**body, **extra})
    response.status_code = status
    response.mimetype = "application/problem+json"
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


def status_of(exc: errors.QuarryError) -> int:
    """The HTTP status of a domain error (500: a QuarryError no entry covers, a bug)."""
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)


def _domain(exc: errors.QuarryError) -> Response:
    status = status_of(exc)
    extra = {"errors": exc.errors} if isinstance(exc, errors.InvalidRequest) and exc.errors else {}
    response = problem(status, exc.title, exc.detail, **extra)
    if isinstance(exc, errors.TooManyRequests | errors.Conflict) and exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, errors.Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="quarry"'
    return response


def _validation(exc: ValidationError) -> Response:
    details = [{"loc": ".".join(str(part) for part in err["loc"]), "msg": err["msg"]} for err in exc.errors()]
    summary = "; ".join(f"{d['loc'] or 'body'}: {d['msg']}" for d in details[:5])
    return problem(422, "Invalid request", summary, errors=details)


def _http(exc: HTTPException) -> Response:
    status = exc.code or 500
    return problem(status, exc.name, exc.description or exc.name)


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "Internal server error", "an unexpected error occurred; it has been logged")


def register(app: Flask) -> None:
    app.register_error_handler(errors.QuarryError, _domain)
    app.register_error_handler(ValidationError, _validation)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(Exception, _unexpected)
