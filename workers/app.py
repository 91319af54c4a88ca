"""The Celery app of the workers: `celery -A workers.app worker -Q ingest` (or `-Q ask`)."""

from __future__ import annotations

from celery.app import trace

from celeryconfig import make_celery
from common.settings import get_settings

# Results hold document text (passages): keep them out of the logs, which are not access-controlled
# like the job store. The line still says which task succeeded and how long it took.
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"

# Imported by every worker before it starts (`include`): the tasks, and the modules whose signal handlers
# must be connected before `worker_init` and `celeryd_after_setup` fire (workers.gate renices an ingest
# worker and splits the cores between its children; workers.warmup warms the models; workers.telemetry
# sets up tracing).
app = make_celery(
    get_settings(),
    include=[
        "workers.tasks",
        "workers.webhooks",
        "workers.metrics",
        "workers.sweeper",
        "workers.warmup",
        "workers.gate",
        "workers.telemetry",
    ],
)
