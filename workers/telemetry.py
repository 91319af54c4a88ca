"""Tracing in the workers (`common.tracing`), set up where the tasks run: in each prefork child after the
fork (the span exporter's thread does not survive one), in the worker process itself for threads and
solo pools (the ask and webhook workers). Nothing happens unless OTEL_EXPORTER_OTLP_ENDPOINT is set."""

from __future__ import annotations

from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init

from common import tracing
from common.settings import get_settings
from workers.warmup import is_prefork


@celeryd_after_setup.connect  # type: ignore[untyped-decorator]
def _trace_worker(sender: str, instance: Any, **_: Any) -> None:
    if not is_prefork(instance.pool_cls):
        tracing.setup(get_settings(), "worker")


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _trace_child(**_: Any) -> None:
    tracing.setup(get_settings(), "worker")
