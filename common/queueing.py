"""The one way to build a Celery app; the API uses it to enqueue by task name without importing tasks."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

import celeryconfig
from common.settings import Settings


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """A Celery app configured from `settings`; creating it connects to nothing."""
    app = Celery("quarry", include=list(include), set_as_current=False)
    app.conf.update(celeryconfig.from_settings(settings))
    return app
