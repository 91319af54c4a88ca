"""The Celery app of the workers: `celery -A workers.app worker -Q ingest` (or `-Q ask`)."""

from __future__ import annotations

from celery.app import trace

from celeryconfig import make_celery
from common.retries import worker_publish_retry
from common.settings import get_settings

# Results hold document text (passages): keep them out of the logs, which are not access-controlled
# like the job store. The line still says which task succeeded and how long it took.
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"

# Imported by every worker before it starts (`include`): the tasks, and the modules whose signal handlers
# must be connected before `worker_init` and `celeryd_after_setup` fire (workers.gate renices an ingest
# worker and splits the cores between its children; workers.warmup warms the models; workers.telemetry
# sets up tracing).
_settings = get_settings()
app = make_celery(
    _settings,
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
# A worker publishes (batches, settles, webhooks, re-sends) as patiently as it runs its Redis commands; the
# API's app does not import this module and keeps its short policy (`common.retries`).
app.conf.task_publish_retry_policy = worker_publish_retry(_settings.worker_redis_outage_s)
