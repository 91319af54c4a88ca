"""The worker app's import-time promises: no connection, and no document text in the success log line."""

from __future__ import annotations

from celery.app import trace


def test_results_are_not_logged_and_tasks_are_registered() -> None:
    from workers.app import app

    assert "return_value" not in trace.LOG_SUCCESS
    app.loader.import_default_modules()
    assert {"quarry.ingest", "quarry.ingest_batch", "quarry.ask", "quarry.delete"} <= set(app.tasks)
