"""Python client for the Quarry HTTP API; importable without the server's dependencies (torch, Celery)."""

from client.http import Job, QuarryClient, QuarryError
from client.webhooks import verify_signature

__all__ = ["Job", "QuarryClient", "QuarryError", "verify_signature"]
