"""The Celery app of the workers: `celery -A workers.app worker -Q ingest` (or `-Q query`)."""

from __future__ import annotations

from common.queueing import make_celery
from common.settings import get_settings

app = make_celery(get_settings(), include=["workers.tasks"])
