"""The closed set of domain errors. HTTP statuses are assigned in `api.problems`, nowhere else."""

from __future__ import annotations


class QuarryError(Exception):
    """Base of every error Quarry raises on purpose; `detail` is written for a person."""

    title = "Quarry error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(QuarryError):
    """The client sent something that cannot be accepted as it is."""

    title = "Invalid request"

    def __init__(self, detail: str, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class NotFound(QuarryError):
    title = "Not found"


class Unauthorized(QuarryError):
    """No API key, or one that is not configured."""

    title = "Unauthorized"


class Forbidden(QuarryError):
    """A valid API key asked for a collection it is not bound to."""

    title = "Forbidden"


class TooManyRequests(QuarryError):
    """Backpressure or a rate limit: the client should come back after `retry_after_s`."""

    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(QuarryError):
    title = "Payload too large"


class UnsupportedMediaType(QuarryError):
    title = "Unsupported media type"


class Conflict(QuarryError):
    """The request is valid but contradicts stored state (e.g. another embedding model); with
    `retry_after_s`, the state is passing (a first request with the same Idempotency-Key still runs)."""

    title = "Conflict"

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(QuarryError):
    """A dependency (Redis, broker, Milvus) cannot be reached; retrying later may work."""

    title = "Service unavailable"


class ModelUnavailable(QuarryError):
    """A configured model cannot be loaded (not downloadable, not on disk); retrying will not help."""

    title = "Model unavailable"


class DocumentError(QuarryError):
    """One document could not be parsed or ingested; not retriable."""

    title = "Document failed"
