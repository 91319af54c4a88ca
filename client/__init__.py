"""Python client for the Quarry HTTP API; importable without the server's dependencies (torch, Celery)."""

from client.http import Job, QuarryClient, QuarryError

__all__ = ["Job", "QuarryClient", "QuarryError"]
